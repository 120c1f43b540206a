// Plain, immutable settings loaded from YAML. No behaviour lives here: the loader
// (config/loader.hpp) fills and validates these structs, and everything else reads them
// through a shared_ptr<const gateway_config> that is swapped whole on reload.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/ip_network.hpp"

namespace batchgate::config {

using duration = std::chrono::milliseconds;

// Where a setting came from, for error messages at run time ("routes[2] 'users' at app.yaml:14").
struct source_mark {
    std::string file;
    int line = 0;  // 1-based; 0 when unknown
};

// "host:port" for listeners.
struct endpoint {
    std::string host = "127.0.0.1";
    std::uint16_t port = 0;
};

// limits.max_header's largest value: Beast stores a field's value in 16 bits, and its parser holds
// each line of a head to the limit (not the head as a whole), so no field is then longer than that.
inline constexpr std::size_t max_header_cap = 64 * 1024;

struct limits_settings {
    std::size_t max_body_bytes = 1024 * 1024;      // limits.max_body: 1MiB
    std::size_t max_header_bytes = 16 * 1024;      // limits.max_header: 16KiB, at most max_header_cap
    duration idle_timeout = std::chrono::seconds(60);   // limits.idle_timeout
    duration drain_timeout = std::chrono::seconds(10);  // limits.drain_timeout (SIGTERM)
    // limits.max_json_depth: JSON from callers and upstreams nested deeper is refused
    // (text/json_text.hpp has the default and the cap).
    std::size_t max_json_depth = 64;
    // limits.max_connections: client connections open at once; more get a 503 and are closed.
    // Lowered at start (with a warning) to what RLIMIT_NOFILE leaves after the upstream pools.
    std::size_t max_connections = 10000;
    // limits.max_buffered: bodies held in memory at once (requests read, upstream answers read,
    // answers being written); new body-bearing work over it gets 503 with Retry-After.
    std::size_t max_buffered_bytes = 256u * 1024 * 1024;
    // limits.send_timeout: a client that accepts no byte of its answer for this long is dropped.
    duration send_timeout = std::chrono::seconds(10);
};

// upstreams.<name>
// upstreams.X.concurrency: how many batch calls all coalesce routes of one upstream may have in
// flight together (routes that set max_concurrent_batches keep their own fixed limit instead).
struct concurrency_settings {
    bool adaptive = true;      // limit: adaptive (default), or a number: a fixed limit
    std::size_t initial = 4;   // initial: the adaptive limit's start; the fixed limit
    std::size_t min = 1;       // min: never below
    std::size_t max = 64;      // max: never above
};

struct upstream_settings {
    std::string name;
    std::string url;                               // as written: http[s]://host:port
    std::string host;                              // parsed from url
    std::uint16_t port = 80;                       // parsed from url
    std::size_t max_connections = 256;             // pool size: concurrent connections
    duration connect_timeout = std::chrono::seconds(2);
    duration request_timeout = std::chrono::seconds(10);
    std::size_t max_response_bytes = 64 * 1024 * 1024;  // max_response: 64MiB
    // keep_alive: connections carry one request after another. false: one request each, then
    // closed (for an upstream that answers requests nobody sent, which on a reused connection
    // would be taken for the next request's answer).
    bool keep_alive = true;
    // https:// upstreams (tls: section).
    bool tls = false;                  // url scheme is https
    bool tls_verify = true;            // tls.verify: check the certificate chain and name
    std::string tls_ca_file;           // tls.ca_file: PEM trust anchors; "" = the system store
    std::string tls_server_name;       // tls.server_name: SNI and the name checked; "" = url host
    concurrency_settings concurrency;  // concurrency: batch calls in flight (coalesce routes)
    source_mark mark;
};

// fan_out: a client's batch call becomes single-item upstream calls (fan_out settings);
// batch_envelope: a generic {"requests":[...]} call dispatched through the route table.
enum class route_mode { passthrough, coalesce, fan_out, batch_envelope };

// routes[].match: either a path template ("/users/{id}") or a prefix ("/api/").
struct route_match {
    std::vector<std::string> methods;  // upper case; empty = any method
    std::string path;                  // template; empty when prefix is used
    std::string prefix;                // empty when path is used
};

// A value taken from the caller's request.
enum class value_source { path, query, header, body };

// coalesce.key.generate: whether the gateway makes up the item key (a correlation id such as
// "bg-3f9a2c-17", unique for the process lifetime).
enum class key_generation {
    never,         // "never" (default): the key comes from the request; missing -> on_missing_key
    when_missing,  // "when_missing": natural key when present, a made-up one when absent (creates)
    always         // "always": always made up; no path/query/header/body is given
};

struct value_ref {
    value_source source = value_source::path;
    std::string name;  // path param, query param, header name (lower case), or JSON pointer for body
                       // (source and name are unset when generate == always)
    key_generation generate = key_generation::never;  // key.generate: never
};

// coalesce.on_missing_key: a caller whose key is missing (or whose body is not JSON when the key
// comes from the body).
enum class missing_key_action {
    reject,      // "reject" (default): 400 with a JSON error naming the missing key
    passthrough  // "passthrough": the request goes to the upstream unchanged
};

// coalesce.partition: what must be equal for two callers to share an upstream call.
struct partition_settings {
    std::vector<std::string> path;     // path params
    std::vector<std::string> query;    // query params
    std::vector<std::string> headers;  // header names, lower case
    // partition.body: JSON pointers into the caller's body (default none). The JSON text of each
    // value is compared (absent != empty); batch templates use them as {body./pointer}.
    std::vector<std::string> body;
    // Authorization and Cookie are part of the partition unless the route turns this off.
    bool credentials = true;
};

enum class batch_encoding {
    query_list,    // GET /users?ids=1,2,7
    query_repeat,  // GET /users?id=1&id=2&id=7
    json_body      // POST /batch with a body built from body_template
};

// coalesce.same_key: a caller whose key already waits in its partition's open batch.
enum class same_key_policy {
    share,            // "share": both callers get the one answer (default when every match entry is GET/HEAD)
    sequence,         // "sequence": the later write goes to a later batch (default otherwise)
    last_write_wins,  // "last_write_wins": one item with the latest payload
    merge_patch,      // "merge_patch": one item, RFC 7386 merge of the later payload onto the earlier
    // "in_batch": each caller is its own item, in arrival order, in the same batch call, for
    // upstreams that apply a batch's operations in order; the n-th result for a key answers the
    // key's n-th caller (or by position). The loader refuses it where that is ambiguous.
    in_batch
};

// coalesce.request: the upstream batch call.
//
// path and string values inside body_template may use placeholders that name partition
// values: {path.NAME}, {query.NAME}, {header.NAME}, {body./POINTER}. A string that is exactly
// "{items}" is replaced by the JSON array of built items (item template below). A string that is
// exactly one placeholder whose value the caller did not send is removed from its object (so an
// optional "fields" vanishes). A ":int", ":number", ":bool", ":string" or ":json" suffix converts.
// See docs/design/write-coalescing.md section 5.
struct batch_request_settings {
    std::string method = "GET";
    std::string path;                   // template, e.g. /users or /api/characters/{path.id}/batch
    batch_encoding encoding = batch_encoding::query_list;
    std::string query_param;            // query_list / query_repeat: the parameter name
    std::string separator = ",";        // query_list
    nlohmann::json body_template;       // json_body
    // request.item: per-item template, built when the caller arrives; may also use {key},
    // {method}, {body}, {map.NAME} and any {path.X}/{query.X}/{header.X}/{body./ptr}.
    // null (default) = "{key}": the bare key as a JSON string.
    nlohmann::json item;
    // request.maps: NAME -> upper-case method -> JSON value, for {map.NAME} (default none).
    std::map<std::string, std::map<std::string, nlohmann::json>> maps;
    std::vector<std::string> forward_headers;  // extra caller headers to copy (first caller's), lower case
};

// lists[].status_rules[]: an item status chosen by several fields of the item, e.g.
// {when: {/status: error, /error: "document not found"}, status: 404}.
struct status_rule {
    std::vector<std::pair<std::string, nlohmann::json>> when;  // JSON pointer -> value; all must be equal
    int status = 0;
};

// One result list of the batch answer (coalesce.response.lists[], or the single-list form).
struct result_list {
    std::string items;               // items: JSON pointer to the array of items; "" (default) = the root
    // key: JSON pointers inside an item to its key; the first present wins ([/tempId, /id]).
    // {""} = the element itself is the key (bare ids). Empty only with by_position.
    std::vector<std::string> key;
    bool by_position = false;        // by_position: false; match by order (single list only)
    int status = 0;                  // lists[].status: fixed HTTP status for every item; 0 = none
    std::string status_code;         // status_code: JSON pointer to a numeric HTTP status, optional
    // status_field: JSON pointer to a string/bool/number status, optional (in the single-list
    // form this is the YAML key "status").
    std::string status_field;
    std::map<std::string, int> status_map;  // status_map: status value ("success", "true") -> HTTP status
    std::string body;                // body: JSON pointer to the caller's body; "" (default) = whole item
    std::optional<nlohmann::json> body_value;  // body_value: fixed JSON body instead of body
    std::string error;               // error: JSON pointer to an error message (non-2xx), optional
    // status_rules: tried in order before status_code / status; the first whose `when` all match
    // gives the item's status (default none).
    std::vector<status_rule> status_rules;
    // template: the caller's 2xx body built from the item ({item}, {item./PTR}) and the caller's
    // own request ({body./PTR}, {path.X}, {query.X}, {header.X}, {key}, {method}, {status});
    // null (default) = `body` as it is.
    nlohmann::json body_template;
};

// coalesce.response: how to split the batch answer back to callers. The single-list YAML form is
// normalised by the loader into exactly one entry of lists.
struct batch_response_settings {
    std::vector<result_list> lists;  // walked in order; a key found in two lists: the first wins
    int missing_status = 404;        // missing_status: for a caller whose key is in no list
    // success_status: upper-case method -> status replacing an item status of exactly 200
    // (e.g. {POST: 201, DELETE: 204}); default none.
    std::map<std::string, int> success_status;
};

// coalesce.on_batch_error: a whole-batch 4xx answer (not 401/403/408/429).
enum class batch_error_policy {
    fail_all,  // "fail_all" (default): every caller gets the upstream's status and body
    isolate    // "isolate": the items the answer names as failed (failed_items) get their error and
               // the rest go again in one call; when it names none usable, re-send in halves
};

// coalesce.failed_items: where a refused all-or-nothing batch answer names its failing items.
struct failed_items_settings {
    std::string items;                 // items: JSON pointer to the array; "" = the root
    std::vector<std::string> key;      // key: pointers inside an entry to the item key (first present)
    std::vector<std::pair<std::string, nlohmann::json>> when;  // when: POINTER -> value, all equal (default none)
    bool configured() const { return !key.empty(); }
};

// coalesce.retry: whole-batch answers worth retrying.
struct retry_settings {
    std::vector<int> statuses{429, 503};                     // retry.statuses: [429, 503]
    unsigned max_attempts = 3;                               // retry.max_attempts: 3 (incl. the first call), 1..20
    duration initial_backoff = std::chrono::milliseconds(50);  // retry.initial_backoff: 50ms, doubles per attempt
    duration max_backoff = std::chrono::seconds(2);          // retry.max_backoff: 2s
};

// max_batch_bytes of query_list / query_repeat routes that set none: keys in the URL stay
// well under the 8 KiB request line most servers accept.
inline constexpr std::size_t default_query_batch_bytes = 6 * 1024;

// coalesce.flush: when a batch is sent.
enum class flush_policy {
    window,   // "window" (default): the first caller of a batch waits max_wait for others
    adaptive  // "adaptive": sent at once (after min_wait) when its partition has nothing in flight
              // and the route a free slot; otherwise it collects until its partition's call comes
              // back (or a slot frees), or max_wait at the latest
};

struct coalesce_settings {
    value_ref key;
    missing_key_action on_missing_key = missing_key_action::reject;  // on_missing_key: reject
    partition_settings partition;
    // same_key / ordered: always resolved by the loader. same_key defaults to share when every
    // match entry lists only GET/HEAD (an entry without method counts as not GET), else sequence;
    // ordered defaults to true unless same_key is share.
    same_key_policy same_key = same_key_policy::share;
    bool ordered = false;
    std::size_t max_batch_items = 100;
    // 0 = no byte limit; query encodings default to default_query_batch_bytes (request-line budget)
    std::size_t max_batch_bytes = 0;
    duration max_wait = std::chrono::milliseconds(5);
    flush_policy flush = flush_policy::window;  // flush: window
    duration min_wait{0};                       // min_wait: 0 (flush: adaptive only)
    // Batch calls in flight for this route alone, a fixed limit; 0 (unset): the route shares its
    // upstream's concurrency limit (adaptive by default).
    std::size_t max_concurrent_batches = 0;
    std::size_t max_waiting = 10000;          // callers waiting on this route; more get 503
    batch_request_settings request;
    batch_response_settings response;
    batch_error_policy on_batch_error = batch_error_policy::fail_all;  // on_batch_error: fail_all
    failed_items_settings failed_items;                               // failed_items: none (bisection)
    retry_settings retry;                                             // retry: see retry_settings
    // shadow: true: every caller is served as a passthrough route would serve it (its own
    // request to the route's upstream); the batching runs beside it on the same arrivals and
    // only records, in metrics of its own, what it would have sent.
    bool shadow = false;
};

// fan_out.request: the single-item upstream call made once per item. Every string may hold
// placeholders: {item}, {item./PTR}, {index}, {body./PTR}, {header.NAME} (see README, Fan-out).
struct fan_out_request_settings {
    std::string method = "GET";                                // method: GET
    std::string path;                                          // path: required (values url-encoded)
    std::vector<std::pair<std::string, std::string>> query;    // query: NAME -> template; absent -> omitted
    std::map<std::string, std::string> headers;                // headers: NAME -> template (lower-case names)
    nlohmann::json body;                                       // body: JSON template; null = no body
    // forward_headers: client headers copied to every item call (lower case).
    std::vector<std::string> forward_headers{"authorization", "cookie"};
};

// fan_out.response: JSON templates for one item (success: 2xx, error: anything else) and the
// envelope around all of them.
struct fan_out_response_settings {
    nlohmann::json success = "{response}";
    nlohmann::json error = nlohmann::json{{"status", "{status}"}, {"error", "{response}"}};
    nlohmann::json envelope = nlohmann::json{{"results", "{results}"}};
};

struct fan_out_settings {
    std::string items;                                         // items: JSON pointer, required
    std::size_t min_items = 1;                                 // min_items: 1
    std::size_t max_items = 100;                               // max_items: 100
    std::vector<std::pair<std::string, nlohmann::json>> require;  // require: POINTER -> value
    fan_out_request_settings request;
    std::size_t concurrency = 10;                              // concurrency: 10
    duration item_timeout = std::chrono::seconds(2);           // item_timeout: 2s
    duration timeout = std::chrono::seconds(10);               // timeout: 10s
    fan_out_response_settings response;
};

// batch_envelope: a generic {"requests":[...]} call dispatched through the route table.
struct batch_envelope_settings {
    std::size_t max_requests = 20;                             // max_requests: 20 (1..100)
    std::size_t concurrency = 10;                              // concurrency: 10
    duration timeout = std::chrono::seconds(10);               // timeout: 10s
};

// passthrough: how a passthrough route streams (bodies flow through fixed windows; nothing is
// buffered whole).
struct passthrough_settings {
    std::size_t max_body_bytes = 0;      // max_body: request body cap; 0 = none (default)
    std::size_t max_response_bytes = 0;  // max_response: answer body cap; 0 = none (default)
    // idle_timeout: once the answer's head has gone to the client (and in upgrade tunnels), the
    // longest wait for the next byte either way.
    duration idle_timeout = std::chrono::seconds(60);
    bool upgrade = true;  // upgrade: relay Connection: Upgrade (WebSocket) requests
    // interim: relay the upstream's 1xx interim answers (103 Early Hints, 102) to HTTP/1.1 clients
    // before the final one (RFC 9110 15.2); false drops them. 100 Continue is the gateway's own.
    bool relay_interim = true;
};

struct route_settings {
    std::string name;
    // routes[].match: one mapping or a list of them; the route matches when any entry matches.
    std::vector<route_match> matches;
    route_mode mode = route_mode::passthrough;
    std::string upstream;
    // Deadline for one caller's answer; 0 = derived (max_wait + upstream request_timeout + 1s).
    duration timeout{0};
    coalesce_settings coalesce;  // meaningful when mode == coalesce
    fan_out_settings fan_out;              // meaningful when mode == fan_out
    batch_envelope_settings batch_envelope;  // meaningful when mode == batch_envelope
    passthrough_settings passthrough;        // meaningful when mode == passthrough
    source_mark mark;
};

// logging: operational log level (stderr) and the per-request access log (stdout).
struct logging_settings {
    std::string level = "info";  // logging.level: debug | info | warn | error
    bool access_log = true;      // logging.access_log: one JSON line per client request
};

// listen_tls: the traffic listener speaks TLS (the admin listener stays plain).
struct listen_tls_settings {
    bool enabled = false;            // the section is present
    std::string cert_chain;          // cert_chain: PEM file, leaf certificate first
    std::string key;                 // key: PEM private key file
    std::vector<std::string> protocols{"TLSv1.2", "TLSv1.3"};  // protocols: allowed versions
    source_mark mark;                // the section's line, for errors found when loading
};

struct gateway_config {
    std::string source_file;
    logging_settings logging;
    endpoint listen{"127.0.0.1", 8080};
    endpoint admin_listen{"127.0.0.1", 9090};
    listen_tls_settings listen_tls;
    unsigned worker_threads = 0;  // 0 = number of cores
    // trusted_proxies: [] - networks of clients (a TLS-terminating ingress) whose
    // X-Forwarded-Proto (http or https) goes upstream as they sent it; anyone else's is replaced
    // by the gateway's own (the scheme of the connection it came in on).
    std::vector<ip_network> trusted_proxies;
    limits_settings limits;
    std::vector<upstream_settings> upstreams;  // in file order
    std::vector<route_settings> routes;        // in match order

    bool trusts(std::string_view client_ip) const {
        for (const auto& n : trusted_proxies)
            if (n.contains(client_ip)) return true;
        return false;
    }

    const upstream_settings* find_upstream(const std::string& name) const {
        for (const auto& u : upstreams)
            if (u.name == name) return &u;
        return nullptr;
    }
};

}  // namespace batchgate::config
