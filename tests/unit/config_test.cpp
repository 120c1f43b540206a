// Config loader: what a user sees when a file loads (values, defaults) and when it does not
// (every error, with file, line, column and key path).
#include "config/loader.hpp"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <algorithm>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/test_certs.hpp"

using namespace batchgate::config;
using namespace std::chrono_literals;

namespace {

std::string data(const std::string& name) {
    return std::string(BATCHGATE_TESTDATA) + "/" + name;
}

std::string dump(const std::vector<std::string>& errs) {
    std::string out;
    for (const auto& e : errs) out += "\n  " + e;
    return out.empty() ? "\n  (no errors)" : out;
}

std::vector<std::string> errors_of_file(const std::string& path) {
    try {
        load_file(path);
    } catch (const config_error& e) {
        return e.errors();
    }
    ADD_FAILURE() << path << " loaded without errors";
    return {};
}

std::vector<std::string> errors_of(const std::string& yaml) {
    try {
        load_string(yaml, "t.yaml");
    } catch (const config_error& e) {
        return e.errors();
    }
    ADD_FAILURE() << "loaded without errors:\n" << yaml;
    return {};
}

// An error "FILE:LINE:COL: KEY: ..." whose message contains fragment.
::testing::AssertionResult has_error(const std::vector<std::string>& errs, const std::string& file, int line,
                                     int col, const std::string& key, const std::string& fragment) {
    const std::string head = file + ":" + std::to_string(line) + ":" + std::to_string(col) + ": " + key + ": ";
    for (const auto& e : errs)
        if (e.rfind(head, 0) == 0 && e.find(fragment, head.size()) != std::string::npos)
            return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "no error starting with \"" << head << "\" containing \"" << fragment
                                         << "\"; got:" << dump(errs);
}

// Same, for inline YAML where only the key path and message matter.
::testing::AssertionResult has_error(const std::vector<std::string>& errs, const std::string& key,
                                     const std::string& fragment) {
    const std::string needle = ": " + key + ": ";
    for (const auto& e : errs) {
        auto at = e.find(needle);
        if (e.rfind("t.yaml:", 0) == 0 && at != std::string::npos && e.find(fragment, at + needle.size()) != std::string::npos)
            return ::testing::AssertionSuccess();
    }
    return ::testing::AssertionFailure() << "no error for " << key << " containing \"" << fragment
                                         << "\"; got:" << dump(errs);
}

const std::string upstream_api = R"(
upstreams:
  api:
    url: http://127.0.0.1:9000
)";

// One coalescing route on /users/{id}; `coalesce` is the block under "coalesce:" indented by 6.
std::string coalesce_route(const std::string& coalesce, const std::string& match_path = "/users/{id}") {
    return upstream_api + R"(
routes:
  - name: users
    match:
      path: )" + match_path + R"(
    upstream: api
    mode: coalesce
    coalesce:
)" + coalesce;
}

const std::string valid_request_response = R"(      request:
        path: /users
        encoding: query_list
        query_param: ids
      response:
        key: /id
)";

}  // namespace

// ---------------------------------------------------------------------------------------
// Files that load

TEST(ConfigLoad, MinimalFileGetsDocumentedDefaults) {
    const auto cfg = load_file(data("minimal.yaml"));
    EXPECT_EQ(cfg.source_file, data("minimal.yaml"));
    EXPECT_EQ(cfg.listen.host, "127.0.0.1");
    EXPECT_EQ(cfg.listen.port, 8080);
    EXPECT_EQ(cfg.admin_listen.host, "127.0.0.1");
    EXPECT_EQ(cfg.admin_listen.port, 9090);
    EXPECT_EQ(cfg.worker_threads, 0u);
    EXPECT_EQ(cfg.limits.max_body_bytes, 1024u * 1024);
    EXPECT_EQ(cfg.limits.max_header_bytes, 16u * 1024);
    EXPECT_EQ(cfg.limits.max_json_depth, 64u);
    EXPECT_EQ(cfg.limits.idle_timeout, 60s);
    EXPECT_EQ(cfg.limits.drain_timeout, 10s);

    ASSERT_EQ(cfg.upstreams.size(), 1u);
    const auto& u = cfg.upstreams[0];
    EXPECT_EQ(u.name, "backend");
    EXPECT_EQ(u.url, "http://127.0.0.1:9000");
    EXPECT_EQ(u.host, "127.0.0.1");
    EXPECT_EQ(u.port, 9000);
    EXPECT_EQ(u.max_connections, 256u);
    EXPECT_EQ(u.connect_timeout, 2s);
    EXPECT_EQ(u.request_timeout, 10s);
    EXPECT_EQ(u.max_response_bytes, 64u * 1024 * 1024);
    EXPECT_EQ(u.mark.file, data("minimal.yaml"));
    EXPECT_EQ(u.mark.line, 3);

    ASSERT_EQ(cfg.routes.size(), 1u);
    const auto& r = cfg.routes[0];
    EXPECT_EQ(r.name, "all");
    EXPECT_EQ(r.mode, route_mode::passthrough);
    EXPECT_TRUE(r.matches[0].methods.empty());
    EXPECT_EQ(r.matches[0].prefix, "/");
    EXPECT_EQ(r.matches[0].path, "");
    EXPECT_EQ(r.upstream, "backend");
    EXPECT_EQ(r.timeout, 0ms);
    EXPECT_EQ(r.mark.file, data("minimal.yaml"));
    EXPECT_EQ(r.mark.line, 6);
    EXPECT_EQ(r.passthrough.max_body_bytes, 0u);  // no cap
    EXPECT_EQ(r.passthrough.max_response_bytes, 0u);
    EXPECT_EQ(r.passthrough.idle_timeout, 60s);
    EXPECT_TRUE(r.passthrough.upgrade);
    EXPECT_EQ(cfg.find_upstream("backend"), &cfg.upstreams[0]);
    EXPECT_FALSE(cfg.listen_tls.enabled);
    EXPECT_EQ(cfg.listen_tls.protocols, (std::vector<std::string>{"TLSv1.2", "TLSv1.3"}));
}

TEST(ConfigLoad, FullFileTopLevelLimitsAndUpstreams) {
    const auto cfg = load_file(data("full.yaml"));
    EXPECT_EQ(cfg.listen.host, "::1");
    EXPECT_EQ(cfg.listen.port, 8081);
    EXPECT_EQ(cfg.admin_listen.host, "0.0.0.0");  // ":9191": host defaults to all interfaces
    EXPECT_EQ(cfg.admin_listen.port, 9191);
    EXPECT_EQ(cfg.worker_threads, 4u);
    EXPECT_EQ(cfg.limits.max_body_bytes, 2u * 1024 * 1024);
    EXPECT_EQ(cfg.limits.max_header_bytes, 8u * 1024);
    EXPECT_EQ(cfg.limits.idle_timeout, 30s);
    EXPECT_EQ(cfg.limits.drain_timeout, 0ms);

    ASSERT_EQ(cfg.upstreams.size(), 2u);
    const auto& users = cfg.upstreams[0];  // file order is kept
    EXPECT_EQ(users.name, "users_api");
    EXPECT_EQ(users.url, "http://users.internal:9000/");
    EXPECT_EQ(users.host, "users.internal");
    EXPECT_EQ(users.port, 9000);
    EXPECT_EQ(users.max_connections, 64u);
    EXPECT_EQ(users.connect_timeout, 500ms);
    EXPECT_EQ(users.request_timeout, 1min);
    EXPECT_EQ(users.max_response_bytes, 10'000'000u);
    EXPECT_EQ(users.mark.line, 11);
    const auto& act = cfg.upstreams[1];
    EXPECT_EQ(act.name, "activity_api");
    EXPECT_EQ(act.host, "10.0.0.7");
    EXPECT_EQ(act.port, 80);  // no port in the url
    EXPECT_EQ(act.mark.line, 17);

    ASSERT_EQ(cfg.routes.size(), 7u);
    const char* names[] = {"users", "characters", "activities", "search", "profile", "bulk", "fallback"};
    for (std::size_t i = 0; i < 7; ++i) EXPECT_EQ(cfg.routes[i].name, names[i]) << "routes keep file order";
    EXPECT_EQ(cfg.routes[0].mark.line, 20);
    EXPECT_EQ(cfg.routes[6].mark.line, 142);
    EXPECT_EQ(cfg.routes[6].mode, route_mode::passthrough);
    EXPECT_EQ(cfg.routes[6].matches[0].prefix, "/api/");
}

TEST(ConfigLoad, FullFileQueryListRoute) {
    const auto cfg = load_file(data("full.yaml"));
    const auto& r = cfg.routes[0];
    EXPECT_EQ(r.matches[0].methods, (std::vector<std::string>{"GET", "HEAD"}));  // upper-cased
    EXPECT_EQ(r.matches[0].path, "/users/{id}");
    EXPECT_EQ(r.mode, route_mode::coalesce);
    EXPECT_EQ(r.timeout, 3s);
    const auto& c = r.coalesce;
    EXPECT_EQ(c.key.source, value_source::path);
    EXPECT_EQ(c.key.name, "id");
    EXPECT_EQ(c.partition.headers, std::vector<std::string>{"x-tenant"});
    EXPECT_FALSE(c.partition.credentials);
    EXPECT_EQ(c.max_batch_items, 50u);
    EXPECT_EQ(c.max_batch_bytes, 64u * 1024);
    EXPECT_EQ(c.max_wait, 1ms);  // 250us rounds up, never down to "no wait"
    EXPECT_EQ(c.max_concurrent_batches, 8u);
    EXPECT_EQ(c.max_waiting, 500u);
    EXPECT_EQ(c.request.method, "GET");
    EXPECT_EQ(c.request.path, "/users");
    EXPECT_EQ(c.request.encoding, batch_encoding::query_list);
    EXPECT_EQ(c.request.query_param, "ids");
    EXPECT_EQ(c.request.separator, ";");
    EXPECT_EQ(c.request.forward_headers, std::vector<std::string>{"x-tenant"});
    ASSERT_EQ(c.response.lists.size(), 1u);  // the single-list form is one result list
    EXPECT_EQ(c.response.lists[0].items, "/data");
    EXPECT_EQ(c.response.lists[0].key, std::vector<std::string>{"/id"});
    EXPECT_FALSE(c.response.lists[0].by_position);
    EXPECT_EQ(c.response.missing_status, 410);
}

TEST(ConfigLoad, FullFileQueryRepeatRouteByPosition) {
    const auto cfg = load_file(data("full.yaml"));
    const auto& r = cfg.routes[1];
    EXPECT_EQ(r.matches[0].methods, std::vector<std::string>{"GET"});
    const auto& c = r.coalesce;
    EXPECT_EQ(c.key.name, "item_id");
    EXPECT_EQ(c.partition.path, std::vector<std::string>{"character_id"});
    EXPECT_TRUE(c.partition.credentials);  // default
    EXPECT_EQ(c.max_wait, 0ms);
    EXPECT_EQ(c.max_batch_items, 100u);
    EXPECT_EQ(c.max_batch_bytes, batchgate::config::default_query_batch_bytes);  // query encodings bound the URL
    EXPECT_EQ(c.max_concurrent_batches, 0u);  // unset: the upstream's shared limit
    EXPECT_EQ(c.max_waiting, 10000u);
    EXPECT_EQ(c.request.method, "GET");
    EXPECT_EQ(c.request.path, "/characters/{path.character_id}/items");
    EXPECT_EQ(c.request.encoding, batch_encoding::query_repeat);
    EXPECT_EQ(c.request.query_param, "id");
    ASSERT_EQ(c.response.lists.size(), 1u);
    EXPECT_TRUE(c.response.lists[0].by_position);
    EXPECT_TRUE(c.response.lists[0].key.empty());
    EXPECT_EQ(c.response.lists[0].body, "");
    EXPECT_EQ(c.response.missing_status, 404);
}

TEST(ConfigLoad, FullFileJsonBodyConvertsYamlToJson) {
    const auto cfg = load_file(data("full.yaml"));
    const auto& c = cfg.routes[2].coalesce;
    EXPECT_EQ(c.request.method, "POST");
    EXPECT_EQ(c.request.encoding, batch_encoding::json_body);
    EXPECT_EQ(c.partition.query, std::vector<std::string>{"fields"});
    // Quoted scalars stay strings ("2", "yes"); plain ones become numbers, bools and null.
    const auto expected = nlohmann::json::parse(R"({
        "resource_type": "activities", "ids": "{items}", "fields": "{query.fields}",
        "tenant": "{header.x-tenant}", "limit": 100, "ratio": 0.5, "strict": true,
        "cursor": null, "version": "2", "tags": ["a", 1, "yes"]})");
    EXPECT_EQ(c.request.body_template, expected) << c.request.body_template.dump();
    EXPECT_TRUE(c.request.body_template["limit"].is_number_integer());

    ASSERT_EQ(c.response.lists.size(), 1u);
    const auto& resp = c.response.lists[0];
    EXPECT_EQ(resp.items, "");
    EXPECT_EQ(resp.key, std::vector<std::string>{"/id"});
    EXPECT_EQ(resp.status_code, "/status_code");
    EXPECT_EQ(resp.status_field, "/status");  // "status" in the single-list form is a pointer
    EXPECT_EQ(resp.status, 0);
    EXPECT_EQ(resp.status_map, (std::map<std::string, int>{{"success", 200}, {"error", 502}, {"true", 200}}));
    EXPECT_EQ(resp.body, "/data");
    EXPECT_EQ(resp.error, "/error");
}

TEST(ConfigLoad, FullFileOtherKeySources) {
    const auto cfg = load_file(data("full.yaml"));
    const auto& search = cfg.routes[3].coalesce;
    EXPECT_EQ(search.key.source, value_source::query);
    EXPECT_EQ(search.key.name, "q");
    EXPECT_EQ(search.request.body_template, nlohmann::json::parse(R"(["{items}"])"));

    const auto& profile = cfg.routes[4].coalesce;
    EXPECT_EQ(profile.key.source, value_source::header);
    EXPECT_EQ(profile.key.name, "x-user-id");  // header names are stored lower case
    EXPECT_EQ(profile.response.lists.at(0).key, std::vector<std::string>{"/a~1b~0c"});

    const auto& bulk = cfg.routes[5];
    EXPECT_EQ(bulk.matches[0].methods, std::vector<std::string>{"POST"});
    EXPECT_EQ(bulk.coalesce.key.source, value_source::body);
    EXPECT_EQ(bulk.coalesce.key.name, "/user/id");
    EXPECT_EQ(bulk.coalesce.request.method, "GET");  // GET with a JSON body is allowed
    EXPECT_EQ(bulk.coalesce.request.encoding, batch_encoding::json_body);
}

// ---------------------------------------------------------------------------------------
// Files that do not load: each error with its place, and all of them at once

TEST(ConfigErrors, UnknownKeysAtEveryLevelWithSuggestions) {
    const auto f = data("bad_unknown_key.yaml");
    const auto errs = errors_of_file(f);
    EXPECT_EQ(errs.size(), 4u) << dump(errs);
    EXPECT_TRUE(has_error(errs, f, 2, 1, "listne", "unknown key \"listne\" (did you mean \"listen\"?)"));
    EXPECT_TRUE(has_error(errs, f, 6, 5, "upstreams.api.max_conections",
                          "unknown key \"max_conections\" (did you mean \"max_connections\"?)"));
    EXPECT_TRUE(has_error(errs, f, 15, 7, "routes[0].coalesce.max_wiat",
                          "unknown key \"max_wiat\" (did you mean \"max_wait\"?)"));
    // Too far from any known key: no suggestion.
    EXPECT_TRUE(has_error(errs, f, 20, 9, "routes[0].coalesce.request.frobnicate", "unknown key \"frobnicate\""));
    for (const auto& e : errs)
        if (e.find("frobnicate") != std::string::npos) EXPECT_EQ(e.find("did you mean"), std::string::npos) << e;
}

TEST(ConfigErrors, BadDurations) {
    const auto f = data("bad_duration.yaml");
    const auto errs = errors_of_file(f);
    EXPECT_EQ(errs.size(), 6u) << dump(errs);
    EXPECT_TRUE(has_error(errs, f, 2, 17, "limits.idle_timeout", "bad duration \"5 ms\""));
    EXPECT_TRUE(has_error(errs, f, 3, 18, "limits.drain_timeout", "bad duration \"ms\""));
    EXPECT_TRUE(has_error(errs, f, 7, 22, "upstreams.api.connect_timeout", "bad duration \"10\""));
    EXPECT_TRUE(has_error(errs, f, 8, 22, "upstreams.api.request_timeout", "bad duration \"-1s\""));
    EXPECT_TRUE(has_error(errs, f, 15, 14, "routes[0].timeout", "bad duration \"1.5s\""));
    EXPECT_TRUE(has_error(errs, f, 18, 17, "routes[0].coalesce.max_wait", "bad duration \"99999999999999999999ms\""));
    // The message tells how to write it.
    EXPECT_NE(errs[0].find("like \"5ms\" or \"2s\""), std::string::npos) << errs[0];
}

TEST(ConfigErrors, BadUpstreamUrls) {
    const auto f = data("bad_url.yaml");
    const auto errs = errors_of_file(f);
    EXPECT_EQ(errs.size(), 5u) << dump(errs);
    EXPECT_TRUE(has_error(errs, f, 3, 10, "upstreams.secure.url", "expected http://host[:port] or https://host[:port]"));
    EXPECT_TRUE(has_error(errs, f, 5, 10, "upstreams.with_path.url", "must not have a path (got \"/v1\")"));
    EXPECT_TRUE(has_error(errs, f, 7, 10, "upstreams.bad_port.url", "port must be 1..65535"));
    EXPECT_TRUE(has_error(errs, f, 9, 10, "upstreams.no_scheme.url", "expected http://host[:port]"));
    // Missing required key: reported at the mapping that lacks it.
    EXPECT_TRUE(has_error(errs, f, 11, 5, "upstreams.no_url.url", "required key is missing"));
}

TEST(ConfigErrors, DuplicateRouteNameNamesTheFirstLine) {
    const auto f = data("duplicate_route.yaml");
    const auto errs = errors_of_file(f);
    ASSERT_EQ(errs.size(), 1u) << dump(errs);
    EXPECT_TRUE(has_error(errs, f, 13, 11, "routes[2].name", "duplicate route name \"users\" (first defined at line 5)"));
}

TEST(ConfigErrors, UnknownUpstreamListsKnownOnesAndSuggests) {
    const auto f = data("unknown_upstream.yaml");
    const auto errs = errors_of_file(f);
    ASSERT_EQ(errs.size(), 1u) << dump(errs);
    EXPECT_TRUE(has_error(errs, f, 10, 15, "routes[0].upstream", "unknown upstream \"user_api\""));
    EXPECT_TRUE(has_error(errs, f, 10, 15, "routes[0].upstream", "did you mean \"users_api\"?"));
    EXPECT_TRUE(has_error(errs, f, 10, 15, "routes[0].upstream", "defined upstreams: users_api, orders_api"));
}

TEST(ConfigErrors, PlaceholdersMustBeInThePartition) {
    const auto f = data("bad_placeholder.yaml");
    const auto errs = errors_of_file(f);
    EXPECT_EQ(errs.size(), 5u) << dump(errs);
    EXPECT_TRUE(has_error(errs, f, 16, 15, "routes[0].coalesce.request.path",
                          "request.path uses {path.character_id} but partition.path does not list it"));
    EXPECT_TRUE(has_error(errs, f, 21, 19, "routes[0].coalesce.request.body.fields",
                          "request.body uses {query.fields} but partition.query does not list it: "
                          "callers with different values would share a batch"));
    // Header placeholders compare case-insensitively: {header.X-Tenant} is covered by partition X-Tenant,
    // {header.x-region} is not.
    EXPECT_TRUE(has_error(errs, f, 23, 19, "routes[0].coalesce.request.body.region",
                          "{header.x-region} but partition.headers does not list it"));
    EXPECT_TRUE(has_error(errs, f, 24, 17, "routes[0].coalesce.request.body.note", "{items} must be a whole string value"));
    EXPECT_TRUE(has_error(errs, f, 25, 18, "routes[0].coalesce.request.body.other", "unknown placeholder {foo.bar}"));
}

TEST(ConfigErrors, CoalesceSettingsAreCrossChecked) {
    const auto f = data("bad_coalesce.yaml");
    const auto errs = errors_of_file(f);
    EXPECT_EQ(errs.size(), 21u) << dump(errs);
    // routes[0]: names that are not parameters of /users/{id}, counts out of range, missing keys.
    EXPECT_TRUE(has_error(errs, f, 11, 19, "routes[0].coalesce.key.path", "\"user_id\" is not a parameter of match.path (parameters: id)"));
    EXPECT_TRUE(has_error(errs, f, 13, 16, "routes[0].coalesce.partition.path[0]", "\"tenant\" is not a parameter of match.path"));
    EXPECT_TRUE(has_error(errs, f, 14, 24, "routes[0].coalesce.max_batch_items", "must be between 1 and 10000, got 0"));
    EXPECT_TRUE(has_error(errs, f, 15, 31, "routes[0].coalesce.max_concurrent_batches", "must be at least 1, got 0"));
    EXPECT_TRUE(has_error(errs, f, 17, 9, "routes[0].coalesce.request.query_param", "required key is missing"));
    EXPECT_TRUE(has_error(errs, f, 20, 9, "routes[0].coalesce.response.key", "required key is missing (or set by_position: true)"));
    EXPECT_TRUE(has_error(errs, f, 20, 16, "routes[0].coalesce.response.items", "bad JSON pointer \"data\""));
    EXPECT_TRUE(has_error(errs, f, 21, 9, "routes[0].coalesce.response.status_map", "no effect without status"));
    // routes[1]: a prefix route has no path parameters to key on.
    EXPECT_TRUE(has_error(errs, f, 28, 19, "routes[1].coalesce.key.path", "needs a route with match.path"));
    EXPECT_TRUE(has_error(errs, f, 29, 24, "routes[1].coalesce.max_batch_items", "must be between 1 and 10000, got 10001"));
    EXPECT_TRUE(has_error(errs, f, 31, 9, "routes[1].coalesce.request.body", "required key is missing for encoding json_body"));
    EXPECT_TRUE(has_error(errs, f, 31, 15, "routes[1].coalesce.request.path", "must start with \"/\""));
    EXPECT_TRUE(has_error(errs, f, 33, 9, "routes[1].coalesce.request.query_param", "only used with query_list / query_repeat"));
    EXPECT_TRUE(has_error(errs, f, 35, 14, "routes[1].coalesce.response.key", "bad JSON pointer \"/id~2\""));
    EXPECT_TRUE(has_error(errs, f, 36, 25, "routes[1].coalesce.response.missing_status", "must be between 200 and 599, got 600"));
    // routes[2] / [3]: coalesce block and mode must agree.
    EXPECT_TRUE(has_error(errs, f, 41, 5, "routes[2].coalesce", "coalesce settings given but mode is passthrough"));
    EXPECT_TRUE(has_error(errs, f, 43, 5, "routes[3].coalesce", "required key is missing for mode: coalesce"));
    // routes[4]
    EXPECT_TRUE(has_error(errs, f, 54, 12, "routes[4].coalesce.key", "give exactly one of path, query, header or body"));
    EXPECT_TRUE(has_error(errs, f, 58, 15, "routes[4].coalesce.request.body", "\"{items}\" appears 2 times"));
    EXPECT_TRUE(has_error(errs, f, 61, 9, "routes[4].coalesce.response.key", "give either key or by_position: true"));
    EXPECT_TRUE(has_error(errs, f, 62, 17, "routes[4].coalesce.response.status", "must not be empty"));
}

TEST(ConfigErrors, WrongNodeTypes) {
    const auto f = data("bad_types.yaml");
    const auto errs = errors_of_file(f);
    EXPECT_EQ(errs.size(), 6u) << dump(errs);
    EXPECT_TRUE(has_error(errs, f, 1, 9, "listen", "expected a string, got a list"));
    EXPECT_TRUE(has_error(errs, f, 2, 15, "admin_listen", "bad address \"9090\": missing port"));
    EXPECT_TRUE(has_error(errs, f, 3, 17, "worker_threads", "must be between 0 and 256, got 300"));
    EXPECT_TRUE(has_error(errs, f, 4, 9, "limits", "expected a map, got a scalar"));
    EXPECT_TRUE(has_error(errs, f, 6, 3, "upstreams", "expected a map of upstream name -> settings, got a list"));
    EXPECT_TRUE(has_error(errs, f, 8, 3, "routes", "expected a list of routes, got a map"));
}

TEST(ConfigErrors, BadValuesAllReportedTogetherInFileOrder) {
    const auto f = data("bad_values.yaml");
    const auto errs = errors_of_file(f);
    EXPECT_EQ(errs.size(), 16u) << dump(errs);
    EXPECT_TRUE(has_error(errs, f, 1, 9, "listen", "IPv6 addresses need brackets"));
    EXPECT_TRUE(has_error(errs, f, 2, 17, "worker_threads", "expected a whole number, got \"many\""));
    EXPECT_TRUE(has_error(errs, f, 4, 13, "limits.max_body", "bad size \"1.5MB\""));
    EXPECT_TRUE(has_error(errs, f, 5, 15, "limits.max_header", "must be greater than 0"));
    EXPECT_TRUE(has_error(errs, f, 7, 3, "upstreams.bad name", "bad upstream name \"bad name\""));
    EXPECT_TRUE(has_error(errs, f, 9, 22, "upstreams.bad name.max_connections", "must be at least 1, got 0"));
    EXPECT_TRUE(has_error(errs, f, 10, 19, "upstreams.bad name.max_response", "bad size \"10mb\""));
    EXPECT_TRUE(has_error(errs, f, 12, 11, "routes[0].name", "bad route name \"users/v2\""));
    EXPECT_TRUE(has_error(errs, f, 14, 21, "routes[0].match.method[1]", "bad HTTP method \"BAD METHOD\""));
    EXPECT_TRUE(has_error(errs, f, 15, 13, "routes[0].match.path", "duplicate parameter {id}"));
    EXPECT_TRUE(has_error(errs, f, 16, 7, "routes[0].match", "give either path or prefix, not both"));
    EXPECT_TRUE(has_error(errs, f, 18, 11, "routes[0].mode", "unknown mode \"batch\" (expected passthrough, coalesce, fan_out or batch_envelope)"));
    EXPECT_TRUE(has_error(errs, f, 21, 13, "routes[1].match.path", "bad path template: path template \"users\" must start with"));
    EXPECT_TRUE(has_error(errs, f, 23, 5, "routes[2].name", "required key is missing"));
    EXPECT_TRUE(has_error(errs, f, 23, 12, "routes[2].match.path", "give match.path or match.prefix"));
    EXPECT_TRUE(has_error(errs, f, 25, 14, "routes[2].timeout", "expected a duration"));
    // Sorted by position, so the output reads top to bottom like the file.
    EXPECT_TRUE(std::is_sorted(errs.begin(), errs.end(), [&](const std::string& a, const std::string& b) {
        auto line = [&](const std::string& e) { return std::stoi(e.substr(f.size() + 1)); };
        return line(a) < line(b);
    }));
}

TEST(ConfigErrors, DuplicateYamlKey) {
    const auto f = data("duplicate_key.yaml");
    const auto errs = errors_of_file(f);
    ASSERT_EQ(errs.size(), 1u) << dump(errs);
    EXPECT_TRUE(has_error(errs, f, 4, 5, "upstreams.api.url", "duplicate key (first given at line 3)"));
}

TEST(ConfigErrors, YamlSyntaxError) {
    const auto f = data("bad_syntax.yaml");
    const auto errs = errors_of_file(f);
    ASSERT_EQ(errs.size(), 1u) << dump(errs);
    EXPECT_EQ(errs[0].rfind(f + ":7:13: invalid YAML: ", 0), 0u) << errs[0];
}

TEST(ConfigErrors, EmptyFileNamesWhatIsRequired) {
    const auto f = data("empty.yaml");
    const auto errs = errors_of_file(f);
    EXPECT_EQ(errs.size(), 2u) << dump(errs);
    EXPECT_TRUE(has_error(errs, f, 1, 1, "upstreams", "required key is missing"));
    EXPECT_TRUE(has_error(errs, f, 1, 1, "routes", "required key is missing"));
}

TEST(ConfigErrors, EmptyRouteList) {
    const auto f = data("no_routes.yaml");
    const auto errs = errors_of_file(f);
    ASSERT_EQ(errs.size(), 1u) << dump(errs);
    EXPECT_TRUE(has_error(errs, f, 4, 9, "routes", "at least one route is required"));
}

TEST(ConfigErrors, UnreadableFile) {
    const auto missing = data("does_not_exist.yaml");
    auto errs = errors_of_file(missing);
    ASSERT_EQ(errs.size(), 1u);
    EXPECT_EQ(errs[0], missing + ": cannot read: No such file or directory");

    errs = errors_of_file(BATCHGATE_TESTDATA);  // a directory
    ASSERT_EQ(errs.size(), 1u);
    EXPECT_EQ(errs[0], std::string(BATCHGATE_TESTDATA) + ": cannot read: Is a directory");
}

TEST(ConfigErrors, WhatListsEveryErrorOnItsOwnLine) {
    try {
        load_file(data("bad_url.yaml"));
        FAIL() << "expected config_error";
    } catch (const config_error& e) {
        std::string joined;
        for (const auto& line : e.errors()) joined += (joined.empty() ? "" : "\n") + line;
        EXPECT_EQ(std::string(e.what()), joined);
        EXPECT_EQ(std::count(joined.begin(), joined.end(), '\n'), 4);
    }
}

// ---------------------------------------------------------------------------------------
// Inline YAML: one rule at a time

TEST(ConfigInline, FileNameIsUsedInMessages) {
    const auto errs = errors_of("listen: nope\n");
    EXPECT_TRUE(has_error(errs, "t.yaml", 1, 9, "listen", "bad address \"nope\""));
}

TEST(ConfigInline, RootMustBeAMap) {
    const auto errs = errors_of("- a\n- b\n");
    ASSERT_EQ(errs.size(), 1u) << dump(errs);
    EXPECT_EQ(errs[0], "t.yaml:1:1: expected a map, got a list");
}

TEST(ConfigInline, ListenAddressForms) {
    struct ok_case {
        const char* text;
        const char* host;
        int port;
    };
    for (const auto& c : {ok_case{":8080", "0.0.0.0", 8080}, ok_case{"0.0.0.0:80", "0.0.0.0", 80},
                          ok_case{"localhost:1", "localhost", 1}, ok_case{"[::1]:8080", "::1", 8080},
                          ok_case{"127.0.0.1:0", "127.0.0.1", 0}}) {
        const auto cfg = load_string("listen: \"" + std::string(c.text) + "\"\n" + upstream_api +
                                         "routes: [{name: a, match: {prefix: /}, upstream: api}]\n",
                                     "t.yaml");
        EXPECT_EQ(cfg.listen.host, c.host) << c.text;
        EXPECT_EQ(cfg.listen.port, c.port) << c.text;
    }
    for (const char* bad : {"127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "[::1]8080", "[::1", "a b:80", "host:http"}) {
        const auto errs = errors_of("listen: \"" + std::string(bad) + "\"\n" + upstream_api +
                                    "routes: [{name: a, match: {prefix: /}, upstream: api}]\n");
        EXPECT_TRUE(has_error(errs, "listen", "bad address \"" + std::string(bad) + "\"")) << bad;
    }
}

// A wildcard listener holds its port on every address: the other one could not bind it.
// Beast keeps a field's value in 16 bits: a head limit past 64 KiB would let one field through
// that the parser cannot hold (it throws, and the client got no answer).
TEST(ConfigInline, MaxHeaderIsAtMost64KiB) {
    const std::string routes = "routes: [{name: a, match: {prefix: /}, upstream: api}]\n";
    const auto errs = errors_of("limits: {max_header: 65537}\n" + upstream_api + routes);
    EXPECT_TRUE(has_error(errs, "limits.max_header", "must be at most 64KiB")) << errs.size();
    EXPECT_EQ(load_string("limits: {max_header: 64KiB}\n" + upstream_api + routes, "t.yaml").limits.max_header_bytes,
              65536u);
}

TEST(ConfigInline, ListenAndAdminMustNotOverlapOnAWildcard) {
    for (const char* pair : {"listen: \":9090\"\nadmin_listen: \"127.0.0.1:9090\"\n",
                             "listen: \"127.0.0.1:9091\"\nadmin_listen: \"[::]:9091\"\n",
                             "listen: \"0.0.0.0:9092\"\nadmin_listen: \"localhost:9092\"\n",
                             "listen: \"[::0]:9094\"\nadmin_listen: \"[::1]:9094\"\n",
                             "listen: \"[0:0:0:0:0:0:0:1]:9095\"\nadmin_listen: \"[::1]:9095\"\n"}) {
        const auto errs = errors_of(pair + upstream_api + "routes: [{name: a, match: {prefix: /}, upstream: api}]\n");
        EXPECT_TRUE(has_error(errs, "admin_listen", "listen and admin_listen must be different addresses")) << pair;
    }
    // Different addresses of one family, or a v4 wildcard and a v6 address, bind side by side.
    for (const char* pair : {"listen: \"127.0.0.1:9093\"\nadmin_listen: \"127.0.0.2:9093\"\n",
                             "listen: \"0.0.0.0:9096\"\nadmin_listen: \"[::1]:9096\"\n"})
        EXPECT_NO_THROW(load_string(pair + upstream_api + "routes: [{name: a, match: {prefix: /}, upstream: api}]\n", "t.yaml"))
            << pair;
}

// An initial backoff over the default cap would be capped without a word.
TEST(ConfigInline, AnInitialBackoffOverTheDefaultCapNeedsMaxBackoff) {
    const std::string route = upstream_api + R"(routes:
  - name: u
    match: {method: GET, path: "/users/{id}"}
    upstream: api
    mode: coalesce
    coalesce:
      key: {path: id}
      request: {method: GET, path: /users, encoding: query_list, query_param: ids}
      response: {items: "", key: /id}
      retry: {initial_backoff: 5s)";
    const auto errs = errors_of(route + "}\n");
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.retry.initial_backoff",
                          "is more than max_backoff (2000ms, its default), which caps every backoff: set max_backoff too"))
        << errs.size();
    EXPECT_EQ(load_string(route + ", max_backoff: 10s}\n", "t.yaml").routes[0].coalesce.retry.max_backoff,
              std::chrono::seconds(10));
    // No retries, no backoff to cap.
    EXPECT_NO_THROW(load_string(route + ", statuses: []}\n", "t.yaml"));
    EXPECT_NO_THROW(load_string(route + ", max_attempts: 1}\n", "t.yaml"));
}

TEST(ConfigInline, ListenAndAdminMustDiffer) {
    const auto errs = errors_of("listen: \"127.0.0.1:9090\"\n" + upstream_api +
                                "routes: [{name: a, match: {prefix: /}, upstream: api}]\n");
    EXPECT_TRUE(has_error(errs, "listen", "listen and admin_listen must be different addresses"));
}

TEST(ConfigInline, UpstreamUrlForms) {
    auto load_url = [](const std::string& url) {
        return load_string("upstreams:\n  u:\n    url: \"" + url +
                               "\"\nroutes: [{name: a, match: {prefix: /}, upstream: u}]\n",
                           "t.yaml");
    };
    auto cfg = load_url("http://example.com");
    EXPECT_EQ(cfg.upstreams[0].host, "example.com");
    EXPECT_EQ(cfg.upstreams[0].port, 80);
    cfg = load_url("http://example.com:8081/");
    EXPECT_EQ(cfg.upstreams[0].port, 8081);
    cfg = load_url("http://[::1]:9000");
    EXPECT_EQ(cfg.upstreams[0].host, "::1");
    EXPECT_EQ(cfg.upstreams[0].port, 9000);

    for (const char* bad : {"http://", "http://:80", "http://h:0", "http://h:", "http://user@h", "http://h?x=1",
                            "http://h/#top", "ftp://h", "HTTP//h", "http://h:80/api/"}) {
        const auto errs = errors_of(std::string("upstreams:\n  u:\n    url: \"") + bad +
                                    "\"\nroutes: [{name: a, match: {prefix: /}, upstream: u}]\n");
        EXPECT_TRUE(has_error(errs, "upstreams.u.url", "bad url")) << bad;
    }
}

TEST(ConfigInline, MethodMayBeOneStringAndIsUpperCased) {
    const auto cfg = load_string(upstream_api + "routes: [{name: a, match: {method: post, prefix: /}, upstream: api}]\n",
                                 "t.yaml");
    EXPECT_EQ(cfg.routes[0].matches[0].methods, std::vector<std::string>{"POST"});
}

TEST(ConfigInline, CountsAcceptPlainAndQuotedIntegersOnly) {
    auto cfg = load_string(coalesce_route("      key: {path: id}\n      max_batch_items: \"20\"\n"
                                          "      max_batch_bytes: 1048576\n" +
                                          valid_request_response),
                           "t.yaml");
    EXPECT_EQ(cfg.routes[0].coalesce.max_batch_items, 20u);
    EXPECT_EQ(cfg.routes[0].coalesce.max_batch_bytes, 1048576u);

    for (const char* bad : {"1e3", "12.0", "+5", "0x10", "ten"}) {
        const auto errs = errors_of(coalesce_route("      key: {path: id}\n      max_waiting: " + std::string(bad) + "\n" +
                                                   valid_request_response));
        EXPECT_TRUE(has_error(errs, "routes[0].coalesce.max_waiting", "expected a whole number")) << bad;
    }
    const auto errs = errors_of(coalesce_route("      key: {path: id}\n      max_waiting: -3\n" + valid_request_response));
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.max_waiting", "must be at least 1, got -3"));
    const auto huge = errors_of(coalesce_route("      key: {path: id}\n      max_waiting: 99999999999999999999\n" +
                                               valid_request_response));
    EXPECT_TRUE(has_error(huge, "routes[0].coalesce.max_waiting", "must be at least 1, got 99999999999999999999"));
}

TEST(ConfigInline, ZeroTimeoutsThatWouldNeverSucceedAreRejected) {
    const auto errs = errors_of(R"(
limits: {idle_timeout: 0s}
upstreams:
  api: {url: "http://h", connect_timeout: 0, request_timeout: 0ms}
routes: [{name: a, match: {prefix: /}, upstream: api}]
)");
    EXPECT_EQ(errs.size(), 3u) << dump(errs);
    EXPECT_TRUE(has_error(errs, "limits.idle_timeout", "must be greater than 0"));
    EXPECT_TRUE(has_error(errs, "upstreams.api.connect_timeout", "must be greater than 0"));
    EXPECT_TRUE(has_error(errs, "upstreams.api.request_timeout", "must be greater than 0"));
}

TEST(ConfigInline, QueryEncodingsNeedQueryParamAndNoBody) {
    const auto errs = errors_of(coalesce_route(R"(      key: {path: id}
      request:
        path: /users
        encoding: query_repeat
        separator: ";"
        body: {ids: "{items}"}
      response:
        key: /id
)"));
    EXPECT_EQ(errs.size(), 3u) << dump(errs);
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.request.query_param", "required key is missing"));
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.request.body", "only used with encoding: json_body"));
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.request.separator", "only used with encoding: query_list"));
}

TEST(ConfigInline, UnknownEncodingAndMissingEncoding) {
    auto errs = errors_of(coalesce_route("      key: {path: id}\n      request: {path: /u, encoding: csv}\n"
                                         "      response: {key: /id}\n"));
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.request.encoding",
                          "unknown encoding \"csv\" (expected query_list, query_repeat or json_body)"));
    EXPECT_EQ(errs.size(), 1u) << "no follow-on errors about query_param/body for an unknown encoding" << dump(errs);

    errs = errors_of(coalesce_route("      key: {path: id}\n      request: {path: /u}\n      response: {key: /id}\n"));
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.request.encoding", "required key is missing"));
}

TEST(ConfigInline, JsonBodyNeedsItemsExactlyOnce) {
    const auto errs = errors_of(coalesce_route(R"(      key: {path: id}
      request:
        path: /batch
        encoding: json_body
        body: {ids: "{query.x}"}
      response:
        key: /id
)"));
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.request.body", "must contain \"{items}\" once"));
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.request.body.ids", "partition.query does not list it"));
}

TEST(ConfigInline, ItemsIsNotAllowedInRequestPath) {
    const auto errs = errors_of(coalesce_route(R"(      key: {path: id}
      request:
        path: /users/{items}
        encoding: query_list
        query_param: ids
      response:
        key: /id
)"));
    ASSERT_EQ(errs.size(), 1u) << dump(errs);
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.request.path", "{items} is only allowed in request.body"));
}

TEST(ConfigInline, BadTemplatesInRequestPath) {
    for (const char* bad : {"/users/{path.id", "/users/}", "/users/{id}", "/users/{path.}"}) {
        const auto errs = errors_of(coalesce_route("      key: {path: id}\n      request:\n        path: \"" +
                                                   std::string(bad) +
                                                   "\"\n        encoding: query_list\n        query_param: ids\n"
                                                   "      response: {key: /id}\n"));
        EXPECT_TRUE(has_error(errs, "routes[0].coalesce.request.path", "")) << bad << dump(errs);
        EXPECT_EQ(errs.size(), 1u) << bad << dump(errs);
    }
}

TEST(ConfigInline, PlaceholdersListedInPartitionAreAccepted) {
    const auto cfg = load_string(coalesce_route(R"(      key: {path: id}
      partition:
        path: [org]
        query: [fields]
        headers: [X-Tenant]
      request:
        path: /orgs/{path.org}/users
        encoding: json_body
        body: {ids: "{items}", fields: "{query.fields}", tenant: "{header.x-tenant}", org: "org-{path.org}"}
      response:
        key: /id
)",
                                                "/orgs/{org}/users/{id}"),
                                 "t.yaml");
    const auto& c = cfg.routes[0].coalesce;
    EXPECT_EQ(c.partition.path, std::vector<std::string>{"org"});
    EXPECT_EQ(c.partition.headers, std::vector<std::string>{"x-tenant"});
    EXPECT_EQ(c.request.body_template["org"], "org-{path.org}");
}

TEST(ConfigInline, BadPathTemplates) {
    for (const char* bad : {"/users/{", "/users/{}", "/users/{id", "/users/x{id}", "/users/{a.b}", "/users/{a}{b}", "/users?x=1"}) {
        const auto errs = errors_of(upstream_api + "routes: [{name: a, match: {path: \"" + std::string(bad) +
                                    "\"}, upstream: api}]\n");
        EXPECT_TRUE(has_error(errs, "routes[0].match.path", "bad path template")) << bad;
    }
    const auto errs = errors_of(upstream_api + "routes: [{name: a, match: {prefix: \"/u/{id}\"}, upstream: api}]\n");
    EXPECT_TRUE(has_error(errs, "routes[0].match.prefix", "a prefix is literal"));
}

TEST(ConfigInline, KeySourcesAreValidated) {
    auto errs = errors_of(coalesce_route("      key: {body: \"id\"}\n" + valid_request_response));
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.key.body", "bad JSON pointer \"id\""));
    errs = errors_of(coalesce_route("      key: {header: \"X Bad\"}\n" + valid_request_response));
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.key.header", "bad header name \"X Bad\""));
    errs = errors_of(coalesce_route("      key: {}\n" + valid_request_response));
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.key", "give one of path, query, header or body"));
    errs = errors_of(coalesce_route("      key: id\n" + valid_request_response));
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.key", "expected a map, got a scalar"));
    errs = errors_of(coalesce_route(valid_request_response));
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.key", "required key is missing"));
}

TEST(ConfigInline, StatusMapValues) {
    const auto errs = errors_of(coalesce_route(R"(      key: {path: id}
      request: {path: /u, encoding: query_list, query_param: ids}
      response:
        key: /id
        status: /ok
        status_map: {ok: 99, bad: "x", fine: 204}
)"));
    EXPECT_EQ(errs.size(), 2u) << dump(errs);
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.response.status_map.ok", "must be between 200 and 599, got 99"));
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.response.status_map.bad", "expected a whole number"));
}

TEST(ConfigInline, BoolsAndBodyDuplicates) {
    auto errs = errors_of(coalesce_route(R"(      key: {path: id}
      partition: {credentials: maybe}
      request:
        path: /u
        encoding: json_body
        body: {ids: "{items}", a: 1, a: 2}
      response: {key: /id, by_position: 1x}
)"));
    EXPECT_EQ(errs.size(), 3u) << dump(errs);
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.partition.credentials", "expected true or false, got \"maybe\""));
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.request.body.a", "duplicate key"));
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.response.by_position", "expected true or false"));
}

// A batch call has one value of each header for all its callers: forwarding a header that is
// not part of the partition would hand one caller's value to the others.
TEST(ConfigInline, ForwardedHeadersMustBePartitionHeaders) {
    auto errs = errors_of(coalesce_route(R"(      key: {path: id}
      partition: {headers: X-Tenant}
      request: {path: /u, encoding: query_list, query_param: ids, forward_headers: [X-Tenant, X-User]}
      response: {key: /id}
)"));
    ASSERT_EQ(errs.size(), 1u) << dump(errs);
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.request.forward_headers", "\"X-User\" is not in partition.headers"))
        << dump(errs);
    errs = errors_of(coalesce_route(R"(      key: {path: id}
      partition: {credentials: false}
      request: {path: /u, encoding: query_list, query_param: ids, forward_headers: [Authorization]}
      response: {key: /id}
)"));
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.request.forward_headers", "\"Authorization\" is not in partition.headers"))
        << dump(errs);
}

TEST(ConfigInline, HeaderListsAreLowerCasedAndChecked) {
    const auto cfg = load_string(coalesce_route(R"(      key: {path: id}
      partition: {headers: [X-Tenant, Accept-Language]}
      request: {path: /u, encoding: query_list, query_param: ids, forward_headers: [Accept-Language, Authorization]}
      response: {key: /id}
)"),
                                 "t.yaml");
    EXPECT_EQ(cfg.routes[0].coalesce.partition.headers, (std::vector<std::string>{"x-tenant", "accept-language"}));
    EXPECT_EQ(cfg.routes[0].coalesce.request.forward_headers,
              (std::vector<std::string>{"accept-language", "authorization"}));

    const auto errs = errors_of(coalesce_route(R"(      key: {path: id}
      request: {path: /u, encoding: query_list, query_param: ids, forward_headers: [{a: b}]}
      response: {key: /id}
)"));
    EXPECT_TRUE(has_error(errs, "routes[0].coalesce.request.forward_headers[0]", "expected a string, got a map"));
}

// ---------------------------------------------------------------------------------------
// Write coalescing (docs/design/write-coalescing.md): the reference routes C, D, E and F

namespace {

// Every error of a file, exactly, in file order ("LINE:COL: KEY: message" after the file name).
std::vector<std::string> with_file(const std::string& f, std::vector<std::string> lines) {
    for (auto& l : lines) l = f + ":" + l;
    return lines;
}

const route_settings& route_named(const gateway_config& cfg, const std::string& name) {
    for (const auto& r : cfg.routes)
        if (r.name == name) return r;
    throw std::runtime_error("no route " + name);
}

}  // namespace

TEST(ConfigWrites, AbilitiesC) {
    const auto cfg = load_file(data("write_routes.yaml"));
    ASSERT_EQ(cfg.routes.size(), 4u);
    const auto& r = route_named(cfg, "abilities");
    ASSERT_EQ(r.matches.size(), 1u);  // a single mapping is one entry
    EXPECT_EQ(r.matches[0].methods, std::vector<std::string>{"PATCH"});
    EXPECT_EQ(r.matches[0].path, "/api/characters/{character_id}/abilities/{ability_id}");
    const auto& c = r.coalesce;
    EXPECT_EQ(c.key.source, value_source::path);
    EXPECT_EQ(c.key.name, "ability_id");
    EXPECT_EQ(c.key.generate, key_generation::never);
    EXPECT_EQ(c.on_missing_key, missing_key_action::reject);
    EXPECT_EQ(c.partition.path, std::vector<std::string>{"character_id"});
    EXPECT_TRUE(c.partition.body.empty());
    EXPECT_EQ(c.same_key, same_key_policy::in_batch);
    EXPECT_TRUE(c.ordered);  // default for every write policy
    EXPECT_EQ(c.on_batch_error, batch_error_policy::isolate);
    EXPECT_EQ(c.failed_items.items, "/results");
    EXPECT_EQ(c.failed_items.key, std::vector<std::string>{"/abilityId"});
    ASSERT_EQ(c.failed_items.when.size(), 1u);
    EXPECT_EQ(c.failed_items.when[0], (std::pair<std::string, nlohmann::json>{"/success", false}));
    EXPECT_EQ(c.request.path, "/api/characters/{path.character_id}/abilities/batch");
    EXPECT_EQ(c.request.body_template, nlohmann::json::parse(R"({"operations":"{items}"})"));
    EXPECT_EQ(c.request.item, nlohmann::json::parse(
                                  R"({"abilityId":"{path.ability_id:int}","action":"{body./action}","data":"{body./data}"})"));
    EXPECT_TRUE(c.request.maps.empty());
    ASSERT_EQ(c.response.lists.size(), 1u);  // the single-list form, normalised
    const auto& l = c.response.lists[0];
    EXPECT_EQ(l.items, "/results");
    EXPECT_EQ(l.key, std::vector<std::string>{"/abilityId"});
    EXPECT_EQ(l.status, 0);
    EXPECT_EQ(l.status_field, "/success");
    EXPECT_EQ(l.status_map, (std::map<std::string, int>{{"true", 200}, {"false", 422}}));
    EXPECT_EQ(l.body, "/data");
    EXPECT_FALSE(l.body_value);
    EXPECT_EQ(l.error, "/error");
    EXPECT_TRUE(c.response.success_status.empty());
    // Defaults: retry as documented.
    EXPECT_EQ(c.retry.statuses, (std::vector<int>{429, 503}));
    EXPECT_EQ(c.retry.max_attempts, 3u);
    EXPECT_EQ(c.retry.initial_backoff, 50ms);
    EXPECT_EQ(c.retry.max_backoff, 2s);
}

TEST(ConfigWrites, ProgressD) {
    const auto cfg = load_file(data("write_routes.yaml"));
    const auto& c = route_named(cfg, "progress").coalesce;
    EXPECT_EQ(c.key.source, value_source::body);
    EXPECT_EQ(c.key.name, "/clientEventId");
    EXPECT_EQ(c.on_missing_key, missing_key_action::reject);
    EXPECT_EQ(c.same_key, same_key_policy::sequence);  // a POST route: writes are sequenced by default
    EXPECT_TRUE(c.ordered);
    EXPECT_EQ(c.on_batch_error, batch_error_policy::fail_all);
    EXPECT_EQ(c.max_batch_items, 25u);
    EXPECT_EQ(c.max_batch_bytes, 64000u);
    EXPECT_EQ(c.request.body_template, nlohmann::json::parse(R"({"events":"{items}"})"));
    EXPECT_EQ(c.request.item, "{body}");
    const auto& lists = c.response.lists;
    ASSERT_EQ(lists.size(), 3u);
    EXPECT_EQ(lists[0].items, "/accepted");
    EXPECT_EQ(lists[0].key, std::vector<std::string>{""});
    EXPECT_EQ(lists[0].status, 202);
    EXPECT_EQ(lists[0].body_value, nlohmann::json::parse(R"({"status":"accepted"})"));
    EXPECT_EQ(lists[1].items, "/duplicates");
    EXPECT_EQ(lists[1].status, 200);
    EXPECT_EQ(lists[1].body_value, nlohmann::json::parse(R"({"status":"duplicate"})"));
    EXPECT_EQ(lists[2].items, "/failed");
    EXPECT_EQ(lists[2].key, std::vector<std::string>{"/id"});
    EXPECT_EQ(lists[2].status, 422);
    EXPECT_FALSE(lists[2].body_value);
    EXPECT_EQ(lists[2].body, "");
    EXPECT_EQ(c.response.missing_status, 404);
    EXPECT_EQ(c.retry.statuses, (std::vector<int>{429, 503}));
    EXPECT_EQ(c.retry.max_attempts, 4u);
    EXPECT_EQ(c.retry.initial_backoff, 50ms);
    EXPECT_EQ(c.retry.max_backoff, 2s);
}

TEST(ConfigWrites, DocumentsE) {
    const auto cfg = load_file(data("write_routes.yaml"));
    const auto& r = route_named(cfg, "documents");
    ASSERT_EQ(r.matches.size(), 2u);
    EXPECT_EQ(r.matches[0].methods, std::vector<std::string>{"POST"});
    EXPECT_EQ(r.matches[0].path, "/api/v1/workspaces/{ws}/documents");
    EXPECT_EQ(r.matches[1].methods, (std::vector<std::string>{"PUT", "DELETE"}));
    EXPECT_EQ(r.matches[1].path, "/api/v1/workspaces/{ws}/documents/{doc_id}");
    const auto& c = r.coalesce;
    EXPECT_EQ(c.key.source, value_source::path);
    EXPECT_EQ(c.key.name, "doc_id");
    EXPECT_EQ(c.key.generate, key_generation::when_missing);
    EXPECT_EQ(c.partition.path, std::vector<std::string>{"ws"});
    EXPECT_EQ(c.same_key, same_key_policy::sequence);
    EXPECT_TRUE(c.ordered);
    EXPECT_EQ(c.max_batch_items, 100u);
    EXPECT_EQ(c.max_batch_bytes, 10'000'000u);
    EXPECT_EQ(c.request.body_template,
              nlohmann::json::parse(R"({"workspace_id":"{path.ws}","atomic":false,"operations":"{items}"})"));
    EXPECT_EQ(c.request.item, nlohmann::json::parse(R"({"operation":"{map.operation}","client_id":"{key}",
                                                          "document_id":"{path.doc_id}","data":"{body}"})"));
    ASSERT_EQ(c.request.maps.size(), 1u);
    EXPECT_EQ(c.request.maps.at("operation"),
              (std::map<std::string, nlohmann::json>{{"POST", "create"}, {"PUT", "update"}, {"DELETE", "delete"}}));
    ASSERT_EQ(c.response.lists.size(), 1u);
    const auto& l = c.response.lists[0];
    EXPECT_EQ(l.items, "/results");
    EXPECT_EQ(l.key, std::vector<std::string>{"/client_id"});
    EXPECT_EQ(l.status_field, "/status");
    EXPECT_EQ(l.status_map,
              (std::map<std::string, int>{{"success", 200}, {"conflict", 409}, {"error", 422}, {"skipped", 424}}));
    EXPECT_EQ(l.body, "");
    EXPECT_EQ(l.error, "/error");
    EXPECT_EQ(c.response.success_status, (std::map<std::string, int>{{"POST", 201}, {"DELETE", 204}}));
}

TEST(ConfigWrites, GoalsF) {
    const auto cfg = load_file(data("write_routes.yaml"));
    const auto& r = route_named(cfg, "goals");
    ASSERT_EQ(r.matches.size(), 2u);
    EXPECT_EQ(r.matches[1].methods, std::vector<std::string>{"PUT"});
    const auto& c = r.coalesce;
    EXPECT_EQ(c.key.generate, key_generation::when_missing);
    EXPECT_EQ(c.partition.path, std::vector<std::string>{"org"});
    EXPECT_EQ(c.partition.body, std::vector<std::string>{"/period_id"});
    EXPECT_EQ(c.request.body_template, nlohmann::json::parse(R"({"period_id":"{body./period_id}","goals":"{items}"})"));
    EXPECT_EQ(c.request.item, nlohmann::json::parse(
                                  R"({"id":"{key}","type":"{body./type}","is_new":"{map.is_new}","data":"{body}"})"));
    EXPECT_EQ(c.request.maps.at("is_new"), (std::map<std::string, nlohmann::json>{{"POST", true}, {"PUT", false}}));
    const auto& lists = c.response.lists;
    ASSERT_EQ(lists.size(), 2u);
    EXPECT_EQ(lists[0].items, "/saved");
    EXPECT_EQ(lists[0].key, (std::vector<std::string>{"/tempId", "/id"}));
    EXPECT_EQ(lists[0].status, 200);
    EXPECT_EQ(lists[0].body, "/data");
    EXPECT_EQ(lists[1].items, "/failed");
    EXPECT_EQ(lists[1].key, std::vector<std::string>{"/id"});
    EXPECT_EQ(lists[1].status, 422);
    EXPECT_EQ(lists[1].error, "/error");
    EXPECT_EQ(c.response.success_status, (std::map<std::string, int>{{"POST", 201}}));
    EXPECT_EQ(c.response.missing_status, 404);
}

TEST(ConfigWrites, ReadRoutesKeepTheirDefaults) {
    const auto cfg = load_file(data("full.yaml"));
    const auto& users = cfg.routes[0].coalesce;  // GET, HEAD
    EXPECT_EQ(users.same_key, same_key_policy::share);
    EXPECT_FALSE(users.ordered);
    EXPECT_EQ(users.key.generate, key_generation::never);
    EXPECT_EQ(users.on_missing_key, missing_key_action::reject);
    EXPECT_EQ(users.on_batch_error, batch_error_policy::fail_all);
    EXPECT_TRUE(users.request.item.is_null());  // default "{key}"
    EXPECT_TRUE(users.request.maps.empty());
    EXPECT_TRUE(users.response.success_status.empty());
    EXPECT_EQ(users.retry.max_attempts, 3u);
    EXPECT_EQ(cfg.routes[5].coalesce.same_key, same_key_policy::sequence);  // bulk: POST
    EXPECT_TRUE(cfg.routes[5].coalesce.ordered);
}

TEST(ConfigWrites, SameKeyDefaultDependsOnEveryMatchEntry) {
    auto policy = [](const std::string& match) {
        const auto cfg = load_string(upstream_api + "routes:\n  - name: r\n    match: " + match +
                                         "\n    upstream: api\n    mode: coalesce\n    coalesce:\n"
                                         "      key: {query: id}\n" + valid_request_response,
                                     "t.yaml");
        return std::pair{cfg.routes[0].coalesce.same_key, cfg.routes[0].coalesce.ordered};
    };
    EXPECT_EQ(policy("{method: [GET, HEAD], path: /u}"), std::pair(same_key_policy::share, false));
    EXPECT_EQ(policy("[{method: GET, path: /u}, {method: HEAD, prefix: /v/}]"), std::pair(same_key_policy::share, false));
    EXPECT_EQ(policy("[{method: GET, path: /u}, {method: PUT, path: /v}]"), std::pair(same_key_policy::sequence, true));
    // A match entry without method takes writes too.
    EXPECT_EQ(policy("{path: /u}"), std::pair(same_key_policy::sequence, true));
    EXPECT_EQ(policy("[{method: GET, path: /u}, {path: /v}]"), std::pair(same_key_policy::sequence, true));
}

TEST(ConfigWrites, ExplicitSameKeyAndOrdered) {
    auto load = [](const std::string& extra) {
        return load_string(coalesce_route("      key: {path: id}\n" + extra + valid_request_response), "t.yaml")
            .routes[0]
            .coalesce;
    };
    auto c = load("      same_key: last_write_wins\n");
    EXPECT_EQ(c.same_key, same_key_policy::last_write_wins);
    EXPECT_TRUE(c.ordered);
    c = load("      same_key: sequence\n      ordered: false\n");
    EXPECT_EQ(c.same_key, same_key_policy::sequence);
    EXPECT_FALSE(c.ordered);
    c = load("      same_key: share\n      ordered: true\n      on_missing_key: passthrough\n");
    EXPECT_EQ(c.same_key, same_key_policy::share);
    EXPECT_TRUE(c.ordered);
    EXPECT_EQ(c.on_missing_key, missing_key_action::passthrough);
    c = load("      retry: {statuses: 502, initial_backoff: 10ms, max_backoff: 10ms}\n");
    EXPECT_EQ(c.retry.statuses, std::vector<int>{502});
    EXPECT_EQ(c.retry.initial_backoff, 10ms);
    EXPECT_EQ(c.retry.max_backoff, 10ms);
    c = load("      retry: {statuses: []}\n");
    EXPECT_TRUE(c.retry.statuses.empty());  // never retry
}

TEST(ConfigWrites, GenerateAlwaysNeedsNoSource) {
    const auto cfg = load_string(coalesce_route(R"(      key: {generate: always}
      request: {method: POST, path: /users, encoding: json_body, body: ["{items}"], item: {tmp: "{key}", u: "{body}"}}
      response: {key: /tmp}
)"),
                                 "t.yaml");
    EXPECT_EQ(cfg.routes[0].coalesce.key.generate, key_generation::always);
    EXPECT_EQ(cfg.routes[0].coalesce.request.item, nlohmann::json::parse(R"({"tmp":"{key}","u":"{body}"})"));
    // when_missing with a source that can be missing: query, header, body.
    for (const char* key : {"{query: id, generate: when_missing}", "{header: X-Id, generate: when_missing}",
                            "{body: /id, generate: when_missing}", "{path: id, generate: never}"}) {
        const auto c = load_string(coalesce_route("      key: " + std::string(key) + "\n" + valid_request_response), "t.yaml");
        EXPECT_EQ(c.routes[0].coalesce.key.generate,
                  std::string(key).find("never") != std::string::npos ? key_generation::never : key_generation::when_missing)
            << key;
    }
}

TEST(ConfigWrites, ResponseKeyListAndBodyValueInTheSingleListForm) {
    const auto cfg = load_string(coalesce_route(R"(      key: {path: id}
      request: {path: /u, encoding: query_list, query_param: ids}
      response: {items: /done, key: [/tempId, /id], body_value: {ok: true}, success_status: {get: 203}}
)"),
                                 "t.yaml");
    const auto& resp = cfg.routes[0].coalesce.response;
    ASSERT_EQ(resp.lists.size(), 1u);
    EXPECT_EQ(resp.lists[0].key, (std::vector<std::string>{"/tempId", "/id"}));
    EXPECT_EQ(resp.lists[0].body_value, nlohmann::json::parse(R"({"ok":true})"));
    EXPECT_EQ(resp.success_status, (std::map<std::string, int>{{"GET", 203}}));  // methods upper-cased
}

TEST(ConfigWrites, MatchListEntriesAreNamedByIndex) {
    const auto errs = errors_of(upstream_api + R"(routes:
  - name: r
    match:
      - {method: GET, path: /a}
      - {method: "B A D", path: "/b/{"}
      - {path: /c, prefix: /c}
      - nope
    upstream: api
)");
    EXPECT_EQ(errs.size(), 4u) << dump(errs);
    EXPECT_TRUE(has_error(errs, "routes[0].match[1].method", "bad HTTP method \"B A D\""));
    EXPECT_TRUE(has_error(errs, "routes[0].match[1].path", "bad path template"));
    EXPECT_TRUE(has_error(errs, "routes[0].match[2]", "give either path or prefix, not both"));
    EXPECT_TRUE(has_error(errs, "routes[0].match[3]", "expected a map, got a scalar"));
}

TEST(ConfigWrites, PlaceholderTypeSuffixesAndBodyPointersInBatchTemplates) {
    const auto cfg = load_string(coalesce_route(R"(      key: {path: id}
      partition: {path: [org], body: /period_id, query: [v]}
      request:
        method: POST
        path: /orgs/{path.org}/batch?period={body./period_id}
        encoding: json_body
        body: {org: "{path.org:int}", v: "{query.v:number}", p: "{body./period_id:string}", items: "{items}"}
        item: {n: "{path.id:int}", b: "{query.flag:bool}", j: "{header.x-meta:json}", s: "{body./a~1b:string}"}
      response: {key: /id}
)",
                                                "/orgs/{org}/users/{id}"),
                                 "t.yaml");
    EXPECT_EQ(cfg.routes[0].coalesce.partition.body, std::vector<std::string>{"/period_id"});
}

TEST(ConfigErrors, WriteMatchEntries) {
    const auto f = data("bad_write_match.yaml");
    EXPECT_EQ(errors_of_file(f), with_file(f, {
        "12:19: routes[0].coalesce.key.path: \"id\" is not a parameter of any match entry's path (parameters: ws, doc_id)",
        "13:26: routes[0].coalesce.partition.path[0]: \"ws\" is not a parameter of match[2] (it uses match.prefix, which has no parameters); partition.path must be a parameter of every match entry",
        "19:34: routes[0].coalesce.request.item.rev: \"rev\" is not a parameter of any match entry's path (parameters: ws, doc_id)",
        "28:38: routes[1].coalesce.key.generate: generate: when_missing would never generate a key: every match entry has {goal_id} (add a match entry without it, such as the create, or use generate: never)",
        "32:12: routes[2].match: must list at least one match entry",
    }));
}

TEST(ConfigErrors, WriteKeys) {
    const auto f = data("bad_write_key.yaml");
    EXPECT_EQ(errors_of_file(f), with_file(f, {
        "9:13: routes[0].coalesce.key.path: generate: always makes up every key, so the key has no source: remove path (or use generate: when_missing)",
        "10:23: routes[0].coalesce.on_missing_key: unknown on_missing_key \"ignore\" (expected reject or passthrough)",
        "18:34: routes[1].coalesce.key.generate: unknown generate \"maybe\" (expected never, when_missing or always)",
    }));
}

TEST(ConfigErrors, WriteTemplates) {
    const auto f = data("bad_write_templates.yaml");
    EXPECT_EQ(errors_of_file(f), with_file(f, {
        "10:51: routes[0].coalesce.partition.body[1]: must name a field of the body, like /period_id (\"\" would be the whole body)",
        "10:55: routes[0].coalesce.partition.body[2]: bad JSON pointer \"/a~2\": must start with \"/\", and \"~\" must be followed by 0 or 1",
        "13:15: routes[0].coalesce.request.path: {method} is only allowed in request.item: request.path is shared by every caller of a batch",
        "17:17: routes[0].coalesce.request.body.type: request.body uses {body./type} but partition.body does not list it: callers with different values would share a batch",
        "18:16: routes[0].coalesce.request.body.who: {key} is only allowed in request.item: request.body is shared by every caller of a batch",
        "19:16: routes[0].coalesce.request.body.all: {body} is only allowed in request.item: request.body is shared by every caller of a batch",
        "20:15: routes[0].coalesce.request.body.op: {map.op} is only allowed in request.item: request.body is shared by every caller of a batch",
        "24:14: routes[0].coalesce.request.item.n: unknown type suffix \":integer\" in {path.goal_id:integer}: use :int, :number, :bool, :string or :json",
        "25:15: routes[0].coalesce.request.item.op: {map.operation} names no map of request.maps (defined: op)",
        "26:20: routes[0].coalesce.request.item.nested[0]: {items} is only allowed in request.body (request.item is one element of it)",
        "27:16: routes[0].coalesce.request.item.bad: bad JSON pointer \"type\" in {body.type}: write {body./field} (\"~\" must be followed by 0 or 1)",
        "29:30: routes[0].coalesce.request.maps.op.PATCH: \"PATCH\" is not a method this route matches (methods: POST, PUT)",
        "29:45: routes[0].coalesce.request.maps.op.FETCH: \"FETCH\" is not an HTTP method (expected one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)",
        "41:9: routes[1].coalesce.request.item: item is only used with encoding: json_body (query encodings send the keys)",
        "42:9: routes[1].coalesce.request.maps: maps is only used with encoding: json_body (by request.item)",
    }));
}

TEST(ConfigErrors, WriteResponseLists) {
    const auto f = data("bad_write_response.yaml");
    EXPECT_EQ(errors_of_file(f), with_file(f, {
        "12:9: routes[0].coalesce.response.items: give either lists or the single-list keys, not both (move items into an entry of lists)",
        "14:49: routes[0].coalesce.response.lists[0].status: must be between 200 and 599, got 99",
        "15:35: routes[0].coalesce.response.lists[1].key: must list at least one JSON pointer",
        "15:39: routes[0].coalesce.response.lists[1].status: give either a fixed status or status_code / status_field, not both",
        "16:74: routes[0].coalesce.response.lists[2].status_map.ok: must be between 200 and 599, got 600",
        "16:93: routes[0].coalesce.response.lists[2].body_value: give either body or body_value, not both",
        "17:27: routes[0].coalesce.response.lists[3].by_position: by_position needs exactly one result list",
        "18:26: routes[0].coalesce.response.success_status.created: \"created\" is not an HTTP method (expected one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)",
        "18:40: routes[0].coalesce.response.success_status.PUT: \"PUT\" is not a method this route matches (methods: POST)",
        "18:56: routes[0].coalesce.response.success_status.POST: must be between 200 and 599, got 1000",
        "26:25: routes[1].coalesce.response.lists: expected a non-empty list of result lists, got an empty list",
        "26:29: routes[1].coalesce.response.status_map: give either lists or the single-list keys, not both (move status_map into an entry of lists)",
    }));
}

// issue 10: in_batch where answers could not be matched, failed_items, status_rules, templates.
TEST(ConfigErrors, WriteBatching) {
    const auto f = data("bad_write_batching.yaml");
    EXPECT_EQ(errors_of_file(f), with_file(f, {
        "10:17: routes[0].coalesce.same_key: in_batch needs encoding: json_body (a query list carries keys, not several operations on one key)",
        "13:7: routes[0].coalesce.failed_items: failed_items is only used with on_batch_error: isolate (it names the items to take out of a refused batch)",
        "20:17: routes[1].coalesce.same_key: in_batch needs one result list: with 2, the n-th answer for a key cannot be told from the order of the lists (or use one list with by_position: true)",
        "22:21: routes[1].coalesce.failed_items.key: required key is missing",
        "22:29: routes[1].coalesce.failed_items.items: bad JSON pointer \"7\": must be \"\" or start with \"/\", and \"~\" must be followed by 0 or 1",
        "22:51: routes[1].coalesce.failed_items.when./ok: duplicate key",
        "26:49: routes[1].coalesce.response.lists[0].template: unknown placeholder {foo.bar} here: use {item}, {key}, {method}, {status}, {body}, {item./POINTER}, {body./POINTER}, {path.NAME}, {query.NAME}, {header.NAME}",
        "27:63: routes[1].coalesce.response.lists[1].template: give one of body, body_value or template",
        "39:20: routes[2].coalesce.response.status_rules[1].when: expected a non-empty map of JSON pointer -> value, like {/status: error}, got an empty map",
        "39:32: routes[2].coalesce.response.status_rules[1].status: must be between 200 and 599, got 700",
        "40:13: routes[2].coalesce.response.status_rules[2].when: required key is missing",
        "40:27: routes[2].coalesce.response.status_rules[2].why: unknown key \"why\" (did you mean \"when\"?)",
        "41:19: routes[2].coalesce.response.template: unknown type suffix \":float\" in {item./version:float}: use :int, :number, :bool, :string or :json (a JSON pointer here cannot hold \":\")",
    }));
}

TEST(ConfigErrors, WritePolicies) {
    const auto f = data("bad_write_policies.yaml");
    EXPECT_EQ(errors_of_file(f), with_file(f, {
        "10:17: routes[0].coalesce.same_key: merge_patch needs encoding: json_body (query encodings send only keys, there is no payload to merge)",
        "11:16: routes[0].coalesce.ordered: expected true or false, got \"sometimes\"",
        "14:23: routes[0].coalesce.on_batch_error: unknown on_batch_error \"bisect\" (expected fail_all or isolate)",
        "16:25: routes[0].coalesce.retry.statuses[1]: must be between 100 and 599, got 600",
        "17:23: routes[0].coalesce.retry.max_attempts: must be between 1 and 20, got 21",
        "19:22: routes[0].coalesce.retry.max_backoff: must be at least initial_backoff (500ms)",
        "26:17: routes[1].coalesce.same_key: unknown same_key \"newest\" (expected share, sequence, last_write_wins, merge_patch or in_batch)",
        "29:29: routes[1].coalesce.retry.max_attempts: must be between 1 and 20, got 0",
        "29:49: routes[1].coalesce.retry.initial_backoff: must be greater than 0",
    }));
}

// ---------------------------------------------------------------------------------------
// parse_duration / parse_size

TEST(ParseDuration, Units) {
    EXPECT_EQ(parse_duration("5ms"), 5ms);
    EXPECT_EQ(parse_duration("2s"), 2s);
    EXPECT_EQ(parse_duration("1m"), 1min);
    EXPECT_EQ(parse_duration("1h"), 1h);
    EXPECT_EQ(parse_duration("0"), 0ms);
    EXPECT_EQ(parse_duration("0s"), 0ms);
    EXPECT_EQ(parse_duration("007ms"), 7ms);
}

TEST(ParseDuration, SubMillisecondRoundsUpButZeroStaysZero) {
    EXPECT_EQ(parse_duration("250us"), 1ms);
    EXPECT_EQ(parse_duration("1us"), 1ms);
    EXPECT_EQ(parse_duration("1000us"), 1ms);
    EXPECT_EQ(parse_duration("1001us"), 2ms);
    EXPECT_EQ(parse_duration("0us"), 0ms);
}

TEST(ParseDuration, Malformed) {
    for (const char* bad : {"", "5", "ms", "5 ms", " 5ms", "5ms ", "-5ms", "+5ms", "1.5s", "5ns", "5MS", "5sec",
                            "1m30s", "s5", "0x5s", "00"})
        EXPECT_EQ(parse_duration(bad), std::nullopt) << '"' << bad << '"';
}

TEST(ParseDuration, Overflow) {
    // 2562047788h is the last whole hour that fits in signed 64-bit microseconds.
    EXPECT_EQ(parse_duration("2562047788h"), std::chrono::hours(2562047788));
    EXPECT_EQ(parse_duration("2562047789h"), std::nullopt);
    EXPECT_EQ(parse_duration("99999999999999999999ms"), std::nullopt);  // does not fit in 64 bits at all
}

TEST(ParseSize, Units) {
    EXPECT_EQ(parse_size("512"), 512u);
    EXPECT_EQ(parse_size("0"), 0u);
    EXPECT_EQ(parse_size("512B"), 512u);
    EXPECT_EQ(parse_size("64KiB"), 65536u);
    EXPECT_EQ(parse_size("10KB"), 10000u);
    EXPECT_EQ(parse_size("10MB"), 10'000'000u);
    EXPECT_EQ(parse_size("1MiB"), 1048576u);
    EXPECT_EQ(parse_size("2GB"), 2'000'000'000u);
    EXPECT_EQ(parse_size("1GiB"), 1073741824u);
}

TEST(ParseSize, Malformed) {
    for (const char* bad : {"", "KiB", "-1", "-1KiB", "+1", "1.5MB", "10 MB", " 10MB", "10mb", "10kb", "10Kib", "10TB",
                            "10K", "1e3"})
        EXPECT_EQ(parse_size(bad), std::nullopt) << '"' << bad << '"';
}

TEST(ParseSize, Overflow) {
    EXPECT_EQ(parse_size("18446744073709551615"), std::numeric_limits<std::size_t>::max());
    EXPECT_EQ(parse_size("18446744073709551616"), std::nullopt);
    EXPECT_EQ(parse_size("17179869183GiB"), 17179869183ull << 30);
    EXPECT_EQ(parse_size("17179869184GiB"), std::nullopt);  // exactly 2^64
}

TEST(ConfigLogging, DefaultsAndValuesAndErrors) {
    const std::string base = "upstreams: {a: {url: 'http://127.0.0.1:1'}}\nroutes: [{name: r, match: {prefix: /}, upstream: a}]\n";
    auto defaults = batchgate::config::load_string(base, "log.yaml");
    EXPECT_EQ(defaults.logging.level, "info");
    EXPECT_TRUE(defaults.logging.access_log);
    auto quiet = batchgate::config::load_string("logging: {level: warn, access_log: false}\n" + base, "log.yaml");
    EXPECT_EQ(quiet.logging.level, "warn");
    EXPECT_FALSE(quiet.logging.access_log);
    try {
        batchgate::config::load_string("logging: {level: loud, acces_log: false}\n" + base, "log.yaml");
        FAIL() << "accepted a bad logging section";
    } catch (const batchgate::config::config_error& e) {
        const std::string all = e.what();
        EXPECT_NE(all.find("log.yaml:1:18: logging.level: unknown level \"loud\""), std::string::npos) << all;
        EXPECT_NE(all.find("logging.acces_log: unknown key \"acces_log\" (did you mean \"access_log\"?)"), std::string::npos) << all;
    }
}

TEST(ConfigLimits, MaxJsonDepthIsBoundedByTheCap) {
    auto cfg = load_string("limits: {max_json_depth: 512}\n" + coalesce_route("      key: {path: id}\n" + valid_request_response), "t.yaml");
    EXPECT_EQ(cfg.limits.max_json_depth, 512u);
    EXPECT_TRUE(has_error(errors_of("limits: {max_json_depth: 513}\n" + coalesce_route("      key: {path: id}\n" + valid_request_response)), "limits.max_json_depth",
                          "must be between 1 and 512"));
    EXPECT_TRUE(has_error(errors_of("limits: {max_json_depth: 0}\n" + coalesce_route("      key: {path: id}\n" + valid_request_response)), "limits.max_json_depth",
                          "must be between 1 and 512"));
}

// issue 11: flush policy, min_wait, the upstream's concurrency limit.
TEST(ConfigErrors, AdaptiveBatching) {
    const auto f = data("bad_adaptive.yaml");
    EXPECT_EQ(errors_of_file(f), with_file(f, {
        "2:58: upstreams.a.concurrency.limit: expected adaptive or a fixed number of batch calls, got \"lots\"",
        "3:61: upstreams.b.concurrency.max: max is only used with limit: adaptive",
        "4:50: upstreams.c.concurrency: min (10) is above max (5)",
        "5:50: upstreams.d.concurrency: initial (100) must lie between min (1) and max (64)",
        "6:58: upstreams.e.concurrency.limit: must be between 1 and 100000, got 0",
        "6:61: upstreams.e.concurrency.tries: unknown key \"tries\"",
        "14:14: routes[0].coalesce.flush: unknown flush \"eager\" (expected window or adaptive)",
        "15:7: routes[0].coalesce.min_wait: min_wait is only used with flush: adaptive",
        "26:17: routes[1].coalesce.min_wait: must be at most max_wait (2ms)",
    }));
}

TEST(ConfigLoad, AdaptiveBatchingKeys) {
    std::optional<batchgate::config::gateway_config> cfg;
    ASSERT_NO_THROW(cfg.emplace(load_string(R"(
upstreams:
  fixed: {url: "http://127.0.0.1:9000", concurrency: {limit: 12}}
  tuned: {url: "http://127.0.0.1:9001", concurrency: {initial: 2, min: 2, max: 40}}
  plain: {url: "http://127.0.0.1:9002"}
routes:
  - name: r
    match: {method: GET, path: "/users/{id}"}
    upstream: plain
    mode: coalesce
    coalesce:
      key: {path: id}
      flush: adaptive
      min_wait: 2ms
      max_concurrent_batches: 3
      request: {path: /users, encoding: query_list, query_param: ids}
      response: {key: /id}
)", "inline.yaml")));
    const auto& c = *cfg;
    EXPECT_FALSE(c.upstreams[0].concurrency.adaptive);
    EXPECT_EQ(c.upstreams[0].concurrency.initial, 12u);
    EXPECT_EQ(c.upstreams[0].concurrency.max, 12u);
    EXPECT_TRUE(c.upstreams[1].concurrency.adaptive);
    EXPECT_EQ(c.upstreams[1].concurrency.initial, 2u);
    EXPECT_EQ(c.upstreams[1].concurrency.max, 40u);
    EXPECT_TRUE(c.upstreams[2].concurrency.adaptive);  // the default
    EXPECT_EQ(c.upstreams[2].concurrency.initial, 4u);
    EXPECT_EQ(c.upstreams[2].concurrency.min, 1u);
    EXPECT_EQ(c.upstreams[2].concurrency.max, 64u);
    const auto& co = c.routes[0].coalesce;
    EXPECT_EQ(co.flush, batchgate::config::flush_policy::adaptive);
    EXPECT_EQ(co.min_wait, std::chrono::milliseconds(2));
    EXPECT_EQ(co.max_concurrent_batches, 3u);
}

// ---------------------------------------------------------------------------------------
// issue 12: routes[].passthrough and listen_tls

TEST(ConfigLoad, PassthroughKeys) {
    const auto cfg = load_string(upstream_api + R"(
routes:
  - name: uploads
    match: {prefix: /uploads/}
    upstream: api
    passthrough:
      max_body: 10MiB
      max_response: 0
      idle_timeout: 5m
      upgrade: false
      interim: false
  - name: explicit
    match: {prefix: /explicit/}
    upstream: api
    mode: passthrough
    passthrough: {max_response: 2GB, max_body: 512}
  - name: empty
    match: {prefix: /}
    upstream: api
    passthrough: {}
)", "t.yaml");
    const auto& up = cfg.routes[0].passthrough;
    EXPECT_EQ(up.max_body_bytes, 10u * 1024 * 1024);
    EXPECT_EQ(up.max_response_bytes, 0u);
    EXPECT_EQ(up.idle_timeout, 5min);
    EXPECT_FALSE(up.upgrade);
    EXPECT_FALSE(up.relay_interim);
    const auto& ex = cfg.routes[1].passthrough;
    EXPECT_EQ(ex.max_body_bytes, 512u);
    EXPECT_EQ(ex.max_response_bytes, 2000u * 1000 * 1000);
    EXPECT_EQ(ex.idle_timeout, 60s);
    EXPECT_TRUE(ex.upgrade);
    const auto& empty = cfg.routes[2].passthrough;
    EXPECT_EQ(empty.max_body_bytes, 0u);
    EXPECT_EQ(empty.max_response_bytes, 0u);
    EXPECT_EQ(empty.idle_timeout, 60s);
    EXPECT_TRUE(empty.upgrade);
    EXPECT_TRUE(empty.relay_interim) << "interim answers are relayed unless a route says not to";
}

TEST(ConfigErrors, Passthrough) {
    const auto f = data("bad_passthrough.yaml");
    EXPECT_EQ(errors_of_file(f), with_file(f, {
        "10:17: routes[0].passthrough.max_body: bad size \"10 MiB\": expected a whole number of bytes with an optional unit B, KB, KiB, MB, MiB, GB or GiB",
        "11:7: routes[0].passthrough.max_respons: unknown key \"max_respons\" (did you mean \"max_response\"?)",
        "12:21: routes[0].passthrough.idle_timeout: must be greater than 0",
        "13:16: routes[0].passthrough.upgrade: expected true or false, got \"maybe\"",
        "22:5: routes[1].passthrough: passthrough settings given but mode is coalesce (set mode: passthrough or leave mode out)",
        "26:18: routes[2].passthrough: expected a map, got a scalar",
        "30:5: routes[3].passthrough: passthrough settings given but mode is batch_envelope (set mode: passthrough or leave mode out)",
        "35:29: routes[4].passthrough.max_body: bad size \"-1\": expected a whole number of bytes with an optional unit B, KB, KiB, MB, MiB, GB or GiB",
        "35:47: routes[4].passthrough.max_response: bad size \"1.5MiB\": expected a whole number of bytes with an optional unit B, KB, KiB, MB, MiB, GB or GiB",
        "35:69: routes[4].passthrough.idle_timeout: bad duration \"2\": expected a whole number with a unit us, ms, s, m or h, like \"5ms\" or \"2s\"",
        "35:81: routes[4].passthrough.upgrade: expected true or false, got a list",
        "35:97: routes[4].passthrough.interim: expected true or false, got \"often\"",
    }));
}

TEST(ConfigErrors, ListenTlsKeys) {
    const auto f = data("bad_listen_tls.yaml");
    EXPECT_EQ(errors_of_file(f), with_file(f, {
        "4:3: listen_tls.key: required key is missing",
        "4:15: listen_tls.cert_chain: cannot read \"/nonexistent/batchgate/chain.pem\": No such file or directory",
        "5:24: listen_tls.protocols[1]: unknown protocol \"TLSv1.1\" (expected TLSv1.2 or TLSv1.3)",
        "5:33: listen_tls.protocols[2]: duplicate protocol \"TLSv1.3\"",
        "6:3: listen_tls.ciphers: unknown key \"ciphers\"",
    }));
}

TEST(ConfigInline, ListenTlsShape) {
    const std::string routes = upstream_api + "routes: [{name: r, match: {prefix: /}, upstream: api}]\n";
    EXPECT_EQ(errors_of("listen_tls: yes\n" + routes),
              std::vector<std::string>{"t.yaml:1:13: listen_tls: expected a map, got a scalar"});
    EXPECT_EQ(errors_of("listen_tls: {}\n" + routes),
              (std::vector<std::string>{"t.yaml:1:13: listen_tls.cert_chain: required key is missing",
                                        "t.yaml:1:13: listen_tls.key: required key is missing"}));
    EXPECT_EQ(errors_of("listen_tls: {cert_chain: \"\", key: [a], protocols: []}\n" + routes),
              (std::vector<std::string>{"t.yaml:1:26: listen_tls.cert_chain: must not be empty",
                                        "t.yaml:1:35: listen_tls.key: expected a string, got a list",
                                        "t.yaml:1:51: listen_tls.protocols: must list at least one protocol (leave it out for both)"}));
    EXPECT_TRUE(has_error(errors_of("listen_tls: {cert_chain: a, key: b, protocols: {TLSv1.3: on}}\n" + routes),
                          "listen_tls.protocols", "expected a string or a list of strings, got a map"));
}

namespace {

// listen_tls with certificate files made for the test.
class ListenTlsFiles : public ::testing::Test {
protected:
    batchgate::testing::pem_pair pem = batchgate::testing::make_certificate();
    std::string cert = batchgate::testing::write_temp("cert.pem", pem.cert);
    std::string key = batchgate::testing::write_temp("key.pem", pem.key);

    static std::string yaml(const std::string& cert_chain, const std::string& key, const std::string& more = "") {
        return "listen: 127.0.0.1:8443\nlisten_tls:\n  cert_chain: " + cert_chain + "\n  key: " + key + "\n" + more +
               upstream_api + "routes: [{name: r, match: {prefix: /}, upstream: api}]\n";
    }
};

}  // namespace

TEST_F(ListenTlsFiles, AGoodPairLoads) {
    auto cfg = load_string(yaml(cert, key), "t.yaml");
    EXPECT_TRUE(cfg.listen_tls.enabled);
    EXPECT_EQ(cfg.listen_tls.cert_chain, cert);
    EXPECT_EQ(cfg.listen_tls.key, key);
    EXPECT_EQ(cfg.listen_tls.protocols, (std::vector<std::string>{"TLSv1.2", "TLSv1.3"}));
    EXPECT_EQ(cfg.listen_tls.mark.file, "t.yaml");
    EXPECT_EQ(cfg.listen_tls.mark.line, 2);

    cfg = load_string(yaml(cert, key, "  protocols: [TLSv1.3]\n"), "t.yaml");
    EXPECT_EQ(cfg.listen_tls.protocols, std::vector<std::string>{"TLSv1.3"});
    cfg = load_string(yaml(cert, key, "  protocols: TLSv1.2\n"), "t.yaml");  // one name, like match.method
    EXPECT_EQ(cfg.listen_tls.protocols, std::vector<std::string>{"TLSv1.2"});
    // The key may come first in one file holding both.
    const auto both = batchgate::testing::write_temp("both.pem", pem.key + pem.cert);
    EXPECT_NO_THROW(load_string(yaml(both, both), "t.yaml"));
}

TEST_F(ListenTlsFiles, MissingAndUnreadableFilesPointAtTheirKey) {
    const auto dir = std::filesystem::path(cert).parent_path().string();
    EXPECT_EQ(errors_of(yaml("/nonexistent/chain.pem", dir)),
              (std::vector<std::string>{
                  "t.yaml:3:15: listen_tls.cert_chain: cannot read \"/nonexistent/chain.pem\": No such file or directory",
                  "t.yaml:4:8: listen_tls.key: cannot read \"" + dir + "\": Is a directory"}));
    EXPECT_EQ(errors_of(yaml(cert, "/nonexistent/key.pem")),
              std::vector<std::string>{
                  "t.yaml:4:8: listen_tls.key: cannot read \"/nonexistent/key.pem\": No such file or directory"});
}

TEST_F(ListenTlsFiles, NotACertificateChainNotAKey) {
    const auto garbage = batchgate::testing::write_temp("garbage.pem", "not pem at all\n");
    const auto broken = batchgate::testing::write_temp(
        "broken.pem", "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n");
    EXPECT_EQ(errors_of(yaml(garbage, key)),
              std::vector<std::string>{"t.yaml:3:15: listen_tls.cert_chain: \"" + garbage +
                                       "\" holds no PEM certificate (-----BEGIN CERTIFICATE-----)"});
    // A PEM header OpenSSL cannot read past: its reasons, without the bare "ASN1 lib" ones.
    EXPECT_EQ(errors_of(yaml(broken, key)),
              std::vector<std::string>{"t.yaml:3:15: listen_tls.cert_chain: cannot load a PEM certificate chain from \"" +
                                       broken + "\": too long, bad object header, nested asn1 error"});
    // A certificate where the key belongs, a key where the chain belongs.
    EXPECT_EQ(errors_of(yaml(key, cert)),
              (std::vector<std::string>{
                  "t.yaml:3:15: listen_tls.cert_chain: \"" + key + "\" holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                  "t.yaml:4:8: listen_tls.key: \"" + cert + "\" holds no PEM private key (-----BEGIN PRIVATE KEY-----)"}));
    const auto broken_key = batchgate::testing::write_temp(
        "broken-key.pem", "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n");
    auto errs = errors_of(yaml(cert, broken_key));
    ASSERT_EQ(errs.size(), 1u) << dump(errs);
    EXPECT_TRUE(has_error(errs, "t.yaml", 4, 8, "listen_tls.key",
                          "cannot load a PEM private key from \"" + broken_key + "\": "));
}

TEST_F(ListenTlsFiles, EncryptedKeysAreRefusedWithoutAPrompt) {
    BIO* in = BIO_new_mem_buf(pem.key.data(), static_cast<int>(pem.key.size()));
    EVP_PKEY* pkey = PEM_read_bio_PrivateKey(in, nullptr, nullptr, nullptr);
    BIO_free(in);
    ASSERT_NE(pkey, nullptr);
    BIO* out = BIO_new(BIO_s_mem());
    static const char pass[] = "secret";
    PEM_write_bio_PKCS8PrivateKey(out, pkey, EVP_aes_128_cbc(), pass, 6, nullptr, nullptr);
    char* text = nullptr;
    const long n = BIO_get_mem_data(out, &text);
    const auto encrypted = batchgate::testing::write_temp("encrypted.pem", std::string(text, static_cast<std::size_t>(n)));
    BIO_free(out);
    EVP_PKEY_free(pkey);
    const auto errs = errors_of(yaml(cert, encrypted));
    ASSERT_EQ(errs.size(), 1u) << dump(errs);
    EXPECT_EQ(errs[0], "t.yaml:4:8: listen_tls.key: \"" + encrypted +
                           "\" holds an encrypted private key; encrypted keys are not supported");
}

TEST_F(ListenTlsFiles, AKeyOfAnotherCertificateIsAnErrorAtTheKey) {
    const auto other = batchgate::testing::make_certificate();
    const auto other_key = batchgate::testing::write_temp("other-key.pem", other.key);
    auto errs = errors_of(yaml(cert, other_key));
    ASSERT_EQ(errs.size(), 1u) << dump(errs);
    EXPECT_TRUE(has_error(errs, "t.yaml", 4, 8, "listen_tls.key",
                          "the private key in \"" + other_key + "\" does not match the first certificate in \"" + cert +
                              "\": key values mismatch"));
    // A key of another type (RSA for an EC certificate).
    const auto rsa = batchgate::testing::make_certificate(batchgate::testing::key_kind::rsa_2048);
    const auto rsa_key = batchgate::testing::write_temp("rsa-key.pem", rsa.key);
    errs = errors_of(yaml(cert, rsa_key));
    ASSERT_EQ(errs.size(), 1u) << dump(errs);
    EXPECT_TRUE(has_error(errs, "t.yaml", 4, 8, "listen_tls.key", "does not match the first certificate"));
    // The leaf comes first: a chain that starts with another certificate does not match.
    const auto reversed = batchgate::testing::write_temp("reversed.pem", other.cert + pem.cert);
    errs = errors_of(yaml(reversed, key));
    ASSERT_EQ(errs.size(), 1u) << dump(errs);
    EXPECT_TRUE(has_error(errs, "t.yaml", 4, 8, "listen_tls.key", "does not match the first certificate"));
    EXPECT_NO_THROW(load_string(yaml(batchgate::testing::write_temp("chain.pem", pem.cert + other.cert), key), "t.yaml"));
}

TEST(ConfigWrites, ShadowIsOffUnlessTheRouteSaysSo) {
    auto route = [](const std::string& extra) {
        return upstream_api + "routes:\n  - name: r\n    match: {method: GET, path: /u}\n    upstream: api\n"
                              "    mode: coalesce\n    coalesce:\n      key: {query: id}\n" + extra + valid_request_response;
    };
    EXPECT_FALSE(load_string(route(""), "t.yaml").routes[0].coalesce.shadow);
    EXPECT_TRUE(load_string(route("      shadow: true\n"), "t.yaml").routes[0].coalesce.shadow);
    const auto errs = errors_of(route("      shadow: sometimes\n"));
    ASSERT_EQ(errs.size(), 1u) << dump(errs);
    EXPECT_NE(errs[0].find("routes[0].coalesce.shadow"), std::string::npos) << errs[0];
}

// trusted_proxies: networks as address/prefix or one address; host bits cleared; IPv4 mapped into
// IPv6 counts as IPv4; anything else is an error that names the entry.
TEST(ConfigLoad, TrustedProxies) {
    const auto cfg = load_string("trusted_proxies: [10.1.2.3/8, \"fd00::/8\", 127.0.0.1, \"::1\", 192.168.0.0/23, "
                                 "\"::ffff:172.16.0.0/108\"]\n" +
                                     upstream_api + "routes:\n  - {name: all, match: {prefix: /}, upstream: api}\n",
                                 "t.yaml");
    ASSERT_EQ(cfg.trusted_proxies.size(), 6u);
    EXPECT_TRUE(cfg.trusts("172.31.255.1")) << "a mapped network is the IPv4 one (/108 is /12)";
    EXPECT_TRUE(cfg.trusts("::ffff:172.16.0.9"));
    EXPECT_FALSE(cfg.trusts("172.32.0.1"));
    EXPECT_TRUE(cfg.trusts("10.200.0.1"));
    EXPECT_FALSE(cfg.trusts("11.0.0.1"));
    EXPECT_TRUE(cfg.trusts("fd12:3456::1"));
    EXPECT_FALSE(cfg.trusts("fe80::1"));
    EXPECT_TRUE(cfg.trusts("127.0.0.1"));
    EXPECT_FALSE(cfg.trusts("127.0.0.2"));
    EXPECT_TRUE(cfg.trusts("::ffff:127.0.0.1")) << "IPv4 mapped into IPv6";
    EXPECT_TRUE(cfg.trusts("::1"));
    EXPECT_TRUE(cfg.trusts("192.168.1.255"));
    EXPECT_FALSE(cfg.trusts("192.168.2.0"));
    EXPECT_FALSE(cfg.trusts("unknown"));
    EXPECT_FALSE(load_string(upstream_api + "routes:\n  - {name: all, match: {prefix: /}, upstream: api}\n", "t.yaml")
                     .trusts("127.0.0.1"))
        << "none by default";
    for (const std::string bad :
         {"10.0.0.0/33", "::/129", "10.0.0/8", "10.0.0.0/", "10.0.0.0/8x", "example.com", "", "::ffff:10.0.0.0/8"}) {
        try {
            load_string("trusted_proxies: [\"" + bad + "\"]\n" + upstream_api +
                            "routes:\n  - {name: all, match: {prefix: /}, upstream: api}\n",
                        "t.yaml");
            ADD_FAILURE() << bad << " was taken";
        } catch (const config_error& e) {
            EXPECT_NE(std::string(e.what()).find("\"" + bad + "\" is not an IP network"), std::string::npos) << e.what();
        }
    }
}
