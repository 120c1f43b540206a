// Fan-in end to end: concurrent single calls through a real gateway to the mock upstreams of
// reference APIs A and B, checking what every caller got and what the upstream saw.
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <latch>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "tests/integration/harness.hpp"

using namespace batchgate::testing;
using batchgate::mock::mock_options;
using batchgate::mock::mock_upstream;

namespace {

const char* users_yaml = R"(
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
worker_threads: 4
upstreams:
  api:
    url: http://127.0.0.1:{{PORT}}
    request_timeout: {{TIMEOUT}}
routes:
  - name: users
    match: {method: GET, path: "/users/{id}"}
    upstream: api
    mode: coalesce
    coalesce:
      key: {path: id}
      max_batch_items: {{MAX_ITEMS}}
      max_wait: {{WAIT}}
      request:
        method: GET
        path: /users
        encoding: {{ENCODING}}
        query_param: {{PARAM}}
      response:
        items: ""
        key: /id
  - name: activities
    match: {method: GET, path: "/api/v1/activities/{id}"}
    upstream: api
    mode: coalesce
    coalesce:
      key: {path: id}
      partition: {query: [fields]}
      max_wait: {{WAIT}}
      request:
        method: POST
        path: /api/v1/batch/get
        encoding: json_body
        body: {resource_type: activities, ids: "{items}", fields: "{query.fields}"}
      response:
        items: /results
        key: /id
        status_code: /status_code
        status: /status
        status_map: {success: 200, error: 502}
        body: /data
        error: /error
  - name: everything
    match: {prefix: /}
    upstream: api
)";

struct options {
    std::string wait = "30ms";
    std::string max_items = "50";
    std::string encoding = "query_list";
    std::string param = "ids";
    std::string timeout = "2s";
};

std::shared_ptr<const batchgate::config::gateway_config> users_config(unsigned short upstream_port, const options& o) {
    return load_yaml(fill(users_yaml, {{"PORT", std::to_string(upstream_port)},
                                       {"WAIT", o.wait},
                                       {"MAX_ITEMS", o.max_items},
                                       {"ENCODING", o.encoding},
                                       {"PARAM", o.param},
                                       {"TIMEOUT", o.timeout}}));
}


std::vector<batchgate::mock::recorded_call> batch_calls(const mock_upstream& up) {
    std::vector<batchgate::mock::recorded_call> out;
    for (auto& c : up.calls())
        if (c.path == "/users" || c.path == "/api/v1/batch/get") out.push_back(c);
    return out;
}

}  // namespace

TEST(FanIn, TwoHundredConcurrentCallersEachGetTheirOwnUser) {
    mock_upstream up({.threads = 2});
    running_gateway gw(users_config(up.port(), {}));

    auto results = concurrently(200, [&](int i) { return get(gw.port(), "/users/" + std::to_string(i + 1)); });
    for (int i = 0; i < 200; ++i) {
        ASSERT_EQ(results[i].status, 200) << "caller " << i << ": " << results[i].body;
        auto j = results[i].json();
        EXPECT_EQ(j["id"], std::to_string(i + 1)) << "caller " << i << " got someone else's user";
        EXPECT_EQ(j["name"], "user-" + std::to_string(i + 1));
        EXPECT_FALSE(results[i].header("x-batchgate-batch-id").empty());
    }
    auto calls = batch_calls(up);
    EXPECT_EQ(up.count("GET", "/users/1"), 0u) << "single calls reached the upstream";
    EXPECT_LE(calls.size(), 12u) << "expected a handful of batch calls for 200 callers";
    std::multiset<std::string> ids;
    for (const auto& c : calls) {
        auto v = query_values(c.target, "ids", true);
        EXPECT_LE(v.size(), 50u) << c.target;
        ids.insert(v.begin(), v.end());
    }
    EXPECT_EQ(ids.size(), 200u);  // every id sent exactly once
    EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), 200u);
}

// A coalesced caller's answer is composed as bytes, not built as Beast fields: its head is
// framed for the caller's version and Connection as Beast frames any other answer. Every field
// once, Content-Length the body's, the connection kept or closed as RFC 9112 section 9.3 says.
TEST(FanIn, CoalescedAnswersAreFramedForTheCallersVersionAndConnection) {
    mock_upstream up({.user_count = 10});
    running_gateway gw(users_config(up.port(), {.wait = "1ms"}));
    struct exchange {
        http::response<http::string_body> res;
        std::string head;  // as it came, status line and fields
        bool closed = false;  // the gateway closed after the answer
    };
    auto ask = [](tcp::socket& socket, const std::string& request) {
        net::write(socket, net::buffer(request));
        exchange out;
        beast::flat_buffer buffer;
        http::response_parser<http::string_body> parser;
        http::read(socket, buffer, parser);
        out.res = parser.release();
        std::ostringstream head;
        head << out.res.base();
        out.head = head.str();
        // The answer was whole: anything more is the close (EOF) or nothing within 300 ms.
        pollfd p{socket.native_handle(), POLLIN, 0};
        char more;
        out.closed = ::poll(&p, 1, 300) == 1 && ::recv(socket.native_handle(), &more, 1, MSG_PEEK) == 0;
        return out;
    };
    auto each_field_once = [](const exchange& x) {
        for (const char* name : {"Content-Type", "Content-Length", "X-Batchgate-Batch-Id", "X-Batchgate-Batch-Size",
                                 "Server", "X-Request-Id"})
            EXPECT_EQ(x.res.count(name), 1u) << name << " in\n" << x.head;
        EXPECT_EQ(x.res["Content-Length"], std::to_string(x.res.body().size())) << x.head;
        EXPECT_EQ(x.res["Content-Type"], "application/json");
        EXPECT_EQ(x.res["Server"], "batchgate");
        EXPECT_EQ(nlohmann::json::parse(x.res.body())["id"], "7") << x.res.body();
    };
    struct row {
        const char* what;
        std::string request;
        std::string status_line;
        const char* connection;  // the answer's Connection field, nullptr: none
        bool closes;
        std::string next;  // a second request on the same connection, "" for none
    };
    const row rows[] = {
        {"HTTP/1.1: kept open, no Connection field", "GET /users/7 HTTP/1.1\r\nHost: a\r\n\r\n",
         "HTTP/1.1 200 OK\r\n", nullptr, false, "GET /users/7 HTTP/1.1\r\nHost: a\r\nX-Request-Id: second\r\n\r\n"},
        {"HTTP/1.1 with Connection: close: says so, then closes",
         "GET /users/7 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "HTTP/1.1 200 OK\r\n", "close", true, ""},
        {"HTTP/1.0: closes by default, and says nothing about it", "GET /users/7 HTTP/1.0\r\n\r\n",
         "HTTP/1.0 200 OK\r\n", nullptr, true, ""},
        {"HTTP/1.0 asking for keep-alive: gets it, and is told",
         "GET /users/7 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "HTTP/1.0 200 OK\r\n", "keep-alive", false,
         "GET /users/7 HTTP/1.0\r\nX-Request-Id: second\r\n\r\n"},
    };
    net::io_context ioc;
    for (const auto& r : rows) {
        SCOPED_TRACE(r.what);
        auto socket = connect_client(ioc, gw.port());
        auto x = ask(socket, r.request);
        EXPECT_EQ(x.head.rfind(r.status_line, 0), 0u) << x.head;
        each_field_once(x);
        if (r.connection) EXPECT_EQ(x.res[http::field::connection], std::string(r.connection)) << x.head;
        else EXPECT_EQ(x.res.count(http::field::connection), 0u) << x.head;
        EXPECT_EQ(x.closed, r.closes);
        if (r.next.empty()) continue;
        auto again = ask(socket, r.next);  // answered too, and framed as its own request asks
        EXPECT_EQ(again.res.result_int(), 200) << again.head;
        EXPECT_EQ(again.res["X-Request-Id"], "second");
        each_field_once(again);
        EXPECT_EQ(again.closed, again.res.version() == 10);
    }
    {  // an absent user: 404 with the gateway's JSON error, framed the same way
        auto socket = connect_client(ioc, gw.port());
        auto x = ask(socket, "GET /users/99999 HTTP/1.1\r\nHost: a\r\n\r\n");
        EXPECT_EQ(x.head.rfind("HTTP/1.1 404 Not Found\r\n", 0), 0u) << x.head;
        EXPECT_EQ(x.res["Content-Length"], std::to_string(x.res.body().size())) << x.head;
        EXPECT_EQ(x.res.count("X-Batchgate-Batch-Id"), 1u) << x.head;
        EXPECT_EQ(nlohmann::json::parse(x.res.body())["error"], "not_found") << x.res.body();
        EXPECT_FALSE(x.closed);
    }
}

TEST(FanIn, RepeatedParameterSpelling) {
    mock_upstream up;
    running_gateway gw(users_config(up.port(), {.encoding = "query_repeat", .param = "id"}));
    auto results = concurrently(10, [&](int i) { return get(gw.port(), "/users/" + std::to_string(i + 1)); });
    for (int i = 0; i < 10; ++i) {
        ASSERT_EQ(results[i].status, 200) << results[i].body;
        EXPECT_EQ(results[i].json()["id"], std::to_string(i + 1));
    }
    auto calls = batch_calls(up);
    ASSERT_FALSE(calls.empty());
    for (const auto& c : calls) {
        EXPECT_EQ(c.target.find("ids="), std::string::npos) << c.target;
        EXPECT_FALSE(query_values(c.target, "id", false).empty()) << c.target;
    }
}

TEST(FanIn, DuplicateIdsAreSentOnceAndEveryCallerIsAnswered) {
    mock_upstream up;
    running_gateway gw(users_config(up.port(), {.wait = "50ms"}));
    auto results = concurrently(30, [&](int i) { return get(gw.port(), "/users/" + std::to_string(i % 3 + 7)); });
    for (int i = 0; i < 30; ++i) {
        ASSERT_EQ(results[i].status, 200) << results[i].body;
        EXPECT_EQ(results[i].json()["id"], std::to_string(i % 3 + 7));
    }
    std::size_t items = 0;
    for (const auto& c : batch_calls(up)) items += query_values(c.target, "ids", true).size();
    EXPECT_LE(items, 3u * batch_calls(up).size());
    EXPECT_LT(items, 30u);
    EXPECT_GT(gw.metric("batchgate_deduplicated_keys_total{route=\"users\"}"), 0);
}

TEST(FanIn, AbsentIdGets404WithJsonErrorWhileOthersSucceed) {
    mock_upstream up({.user_count = 10});
    running_gateway gw(users_config(up.port(), {.wait = "30ms"}));
    auto results = concurrently(4, [&](int i) { return get(gw.port(), i == 0 ? "/users/999" : "/users/" + std::to_string(i)); });
    EXPECT_EQ(results[0].status, 404);
    auto err = results[0].json();
    EXPECT_EQ(err["error"], "not_found");
    EXPECT_EQ(err["route"], "users");
    EXPECT_EQ(results[0].header("content-type"), "application/json");
    for (int i = 1; i < 4; ++i) EXPECT_EQ(results[i].status, 200);
}

TEST(FanIn, ActivitiesPerItemStatusAndFieldsPartition) {
    mock_upstream up({.user_count = 50});
    running_gateway gw(users_config(up.port(), {.wait = "30ms"}));
    auto results = concurrently(6, [&](int i) {
        switch (i) {
            case 0: return get(gw.port(), "/api/v1/activities/a1");
            case 1: return get(gw.port(), "/api/v1/activities/a2");
            case 2: return get(gw.port(), "/api/v1/activities/a999");  // not found
            case 3: return get(gw.port(), "/api/v1/activities/a3?fields=id,name");
            case 4: return get(gw.port(), "/api/v1/activities/a4?fields=id,name");
            default: return get(gw.port(), "/api/v1/activities/a5?fields=id");
        }
    });
    ASSERT_EQ(results[0].status, 200) << results[0].body;
    EXPECT_EQ(results[0].json()["id"], "a1");
    EXPECT_TRUE(results[0].json().contains("distance_km"));
    EXPECT_EQ(results[1].json()["id"], "a2");
    EXPECT_EQ(results[2].status, 404);
    EXPECT_EQ(results[2].json()["message"], "not found");
    ASSERT_EQ(results[3].status, 200);
    EXPECT_EQ(results[3].json(), (nlohmann::json{{"id", "a3"}, {"name", "activity a3"}}));
    EXPECT_EQ(results[4].json(), (nlohmann::json{{"id", "a4"}, {"name", "activity a4"}}));
    EXPECT_EQ(results[5].json(), (nlohmann::json{{"id", "a5"}}));

    // Different fields never share a batch; each batch names exactly one fields value. (Callers
    // of one partition may still be split over several batches when a loaded machine starts the
    // threads more than a window apart: the ids are checked per fields value over all calls.)
    auto calls = batch_calls(up);
    ASSERT_GE(calls.size(), 3u);
    std::map<std::string, std::multiset<std::string>> ids_by_fields;  // "" = no fields
    for (const auto& c : calls) {
        auto body = nlohmann::json::parse(c.body);
        EXPECT_EQ(body["resource_type"], "activities");
        const std::string fields = body.contains("fields") ? body["fields"].get<std::string>() : "";
        for (const auto& id : body["ids"]) ids_by_fields[fields].insert(id.get<std::string>());
    }
    EXPECT_EQ(ids_by_fields, (std::map<std::string, std::multiset<std::string>>{
                                 {"", {"a1", "a2", "a999"}}, {"id,name", {"a3", "a4"}}, {"id", {"a5"}}}));
}

TEST(FanIn, DifferentAuthorizationValuesNeverShareAnUpstreamCall) {
    mock_upstream up({.threads = 2});
    running_gateway gw(users_config(up.port(), {.wait = "40ms"}));
    // 50 users, 4 calls each, interleaved; user u asks only for ids u*10+1..u*10+4.
    auto results = concurrently(200, [&](int i) {
        const int user = i % 50;
        const int id = user * 10 + i / 50 + 1;
        return get(gw.port(), "/users/" + std::to_string(id), {{"Authorization", "Bearer user-" + std::to_string(user)}});
    });
    for (int i = 0; i < 200; ++i) {
        ASSERT_EQ(results[i].status, 200) << results[i].body;
        EXPECT_EQ(results[i].json()["id"], std::to_string((i % 50) * 10 + i / 50 + 1));
    }
    auto calls = batch_calls(up);
    EXPECT_LT(calls.size(), 200u);
    for (const auto& c : calls) {
        auto auth = c.headers.find("authorization");
        ASSERT_NE(auth, c.headers.end()) << "batch call lost the caller's Authorization: " << c.target;
        const int user = std::stoi(auth->second.substr(std::string("Bearer user-").size()));
        for (const auto& id : query_values(c.target, "ids", true)) {
            const int n = std::stoi(id);
            EXPECT_EQ((n - 1) / 10, user) << "id " << id << " of another user in a call made with " << auth->second;
        }
    }
    // And cookies are kept apart too.
    up.clear();
    auto cookie_results = concurrently(20, [&](int i) {
        return get(gw.port(), "/users/" + std::to_string(i % 2 + 1), {{"Cookie", "session=" + std::to_string(i % 2)}});
    });
    for (auto& r : cookie_results) EXPECT_EQ(r.status, 200);
    for (const auto& c : batch_calls(up)) {
        auto ids = query_values(c.target, "ids", true);
        ASSERT_EQ(ids.size(), 1u) << "two cookies shared a call: " << c.target;
        EXPECT_EQ(c.headers.at("cookie"), "session=" + std::to_string(std::stoi(ids[0]) - 1));
    }
}

TEST(FanIn, SetCookieFromASharedBatchIsNeverHandedToCallers) {
    mock_upstream up;
    running_gateway gw(users_config(up.port(), {}));
    auto r = get(gw.port(), "/users/3");
    ASSERT_EQ(r.status, 200);
    EXPECT_TRUE(r.header("set-cookie").empty());
}

TEST(FanIn, MetricsShowWhatTheTestCaused) {
    mock_upstream up;
    running_gateway gw(users_config(up.port(), {.wait = "30ms"}));
    auto results = concurrently(40, [&](int i) { return get(gw.port(), "/users/" + std::to_string(i + 1)); });
    for (auto& r : results) ASSERT_EQ(r.status, 200);
    const auto calls = batch_calls(up).size();
    EXPECT_EQ(gw.metric_reaching("batchgate_requests_total{route=\"users\",status=\"200\"}", 40), 40);
    EXPECT_EQ(gw.metric("batchgate_batch_size_count{route=\"users\"}"), static_cast<double>(calls));
    EXPECT_EQ(gw.metric("batchgate_batch_size_sum{route=\"users\"}"), 40);
    EXPECT_EQ(gw.metric("batchgate_upstream_calls_saved_total{route=\"users\"}"), 40.0 - static_cast<double>(calls));
    EXPECT_EQ(gw.metric("batchgate_upstream_requests_total{route=\"users\",status=\"200\",upstream=\"api\"}"),
              static_cast<double>(calls));
    EXPECT_EQ(gw.metric("batchgate_batch_wait_seconds_count{route=\"users\"}"), 40);
    // The batcher lowers the gauge after it has posted the batch's answers.
    EXPECT_EQ(gw.metric_reaching("batchgate_waiting_callers{route=\"users\"}", 0), 0);
    const double timer = gw.metric("batchgate_batch_flushes_total{reason=\"timer\",route=\"users\"}");
    const double size = gw.metric("batchgate_batch_flushes_total{reason=\"size\",route=\"users\"}");
    EXPECT_EQ(timer + size, static_cast<double>(calls));
    EXPECT_EQ(get(gw.admin_port(), "/healthz").status, 200);
    EXPECT_EQ(get(gw.admin_port(), "/readyz").status, 200);
}
