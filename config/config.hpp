// Plain, immutable settings loaded from YAML. No behaviour lives here: the loader
// (config/loader.hpp) fills and validates these structs, and everything else reads them
// through a shared_ptr<const gateway_config> that is swapped whole on reload.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

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

struct limits_settings {
    std::size_t max_body_bytes = 1024 * 1024;      // limits.max_body: 1MiB
    std::size_t max_header_bytes = 16 * 1024;      // limits.max_header: 16KiB
    duration idle_timeout = std::chrono::seconds(60);   // limits.idle_timeout
    duration drain_timeout = std::chrono::seconds(10);  // limits.drain_timeout (SIGTERM)
};

// upstreams.<name>
struct upstream_settings {
    std::string name;
    std::string url;                               // as written: http://host:port
    std::string host;                              // parsed from url
    std::uint16_t port = 80;                       // parsed from url
    std::size_t max_connections = 256;             // pool size: concurrent connections
    duration connect_timeout = std::chrono::seconds(2);
    duration request_timeout = std::chrono::seconds(10);
    std::size_t max_response_bytes = 64 * 1024 * 1024;  // max_response: 64MiB
    source_mark mark;
};

enum class route_mode { passthrough, coalesce };

// routes[].match: either a path template ("/users/{id}") or a prefix ("/api/").
struct route_match {
    std::vector<std::string> methods;  // upper case; empty = any method
    std::string path;                  // template; empty when prefix is used
    std::string prefix;                // empty when path is used
};

// A value taken from the caller's request.
enum class value_source { path, query, header, body };
struct value_ref {
    value_source source = value_source::path;
    std::string name;  // path param, query param, header name (lower case), or JSON pointer for body
};

// coalesce.partition: what must be equal for two callers to share an upstream call.
struct partition_settings {
    std::vector<std::string> path;     // path params
    std::vector<std::string> query;    // query params
    std::vector<std::string> headers;  // header names, lower case
    // Authorization and Cookie are part of the partition unless the route turns this off.
    bool credentials = true;
};

enum class batch_encoding {
    query_list,    // GET /users?ids=1,2,7
    query_repeat,  // GET /users?id=1&id=2&id=7
    json_body      // POST /batch with a body built from body_template
};

// coalesce.request: the upstream batch call.
//
// path and string values inside body_template may use placeholders that name partition
// values: {path.NAME}, {query.NAME}, {header.NAME}. A string that is exactly "{items}" is
// replaced by the JSON array of item keys. A string that is exactly one placeholder whose
// value the caller did not send is removed from its object (so an optional "fields" vanishes).
struct batch_request_settings {
    std::string method = "GET";
    std::string path;                   // template, e.g. /users or /api/characters/{path.id}/batch
    batch_encoding encoding = batch_encoding::query_list;
    std::string query_param;            // query_list / query_repeat: the parameter name
    std::string separator = ",";        // query_list
    nlohmann::json body_template;       // json_body
    std::vector<std::string> forward_headers;  // extra caller headers to copy (first caller's), lower case
};

// coalesce.response: how to split the batch answer back to callers.
struct batch_response_settings {
    std::string items;               // JSON pointer to the array of items; "" = the root
    std::string key;                 // JSON pointer inside an item to its key, e.g. /id
    bool by_position = false;        // match by order instead of key (only if upstream keeps order)
    std::string status_code;         // JSON pointer to a numeric HTTP status in the item, optional
    std::string status;              // JSON pointer to a string/bool status, optional
    std::map<std::string, int> status_map;  // status value ("success", "true") -> HTTP status
    std::string body;                // JSON pointer to the caller's body inside the item; "" = whole item
    std::string error;               // JSON pointer to an error message inside the item, optional
    int missing_status = 404;        // for a caller whose key is absent from the answer
};

struct coalesce_settings {
    value_ref key;
    partition_settings partition;
    std::size_t max_batch_items = 100;
    std::size_t max_batch_bytes = 0;          // 0 = no byte limit
    duration max_wait = std::chrono::milliseconds(5);
    std::size_t max_concurrent_batches = 4;   // upstream batch calls in flight per route
    std::size_t max_waiting = 10000;          // callers waiting on this route; more get 503
    batch_request_settings request;
    batch_response_settings response;
};

struct route_settings {
    std::string name;
    route_match match;
    route_mode mode = route_mode::passthrough;
    std::string upstream;
    // Deadline for one caller's answer; 0 = derived (max_wait + upstream request_timeout + 1s).
    duration timeout{0};
    coalesce_settings coalesce;  // meaningful when mode == coalesce
    source_mark mark;
};

struct gateway_config {
    std::string source_file;
    endpoint listen{"127.0.0.1", 8080};
    endpoint admin_listen{"127.0.0.1", 9090};
    unsigned worker_threads = 0;  // 0 = number of cores
    limits_settings limits;
    std::vector<upstream_settings> upstreams;  // in file order
    std::vector<route_settings> routes;        // in match order

    const upstream_settings* find_upstream(const std::string& name) const {
        for (const auto& u : upstreams)
            if (u.name == name) return &u;
        return nullptr;
    }
};

}  // namespace batchgate::config
