// Adaptive batching (issue 11), end to end through a real gateway in front of the mock upstream:
// flush: adaptive sends a lone caller at once and collects the callers that arrive while the
// partition's call is in flight; an upstream's shared concurrency limit wakes another route when
// a call ends; a caller whose deadline passes while its batch waits for a slot is answered then
// and never sent; a caller who hangs up before its batch is sent is left out of it, and its
// write is not applied.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <chrono>
#include <optional>
#include <regex>
#include <set>
#include <thread>

#include "tests/integration/examples.hpp"
#include "tests/integration/kept_alive_client.hpp"

using namespace batchgate::testing;
using batchgate::mock::ability_state;
using batchgate::mock::mock_options;
using batchgate::mock::mock_upstream;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

const char* yaml = R"(
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
worker_threads: 2
upstreams:
  api:
    url: http://127.0.0.1:{{PORT}}
    request_timeout: 5s
    concurrency: {{LIMIT}}
routes:
  - name: users
    match: {method: GET, path: "/users/{id}"}
    upstream: api
    mode: coalesce
    timeout: {{USERS_TIMEOUT}}
    coalesce:
      key: {path: id}
      max_waiting: {{MAX_WAITING}}
      flush: {{FLUSH}}
      max_wait: {{WAIT}}
      request: {method: GET, path: /users, encoding: query_list, query_param: ids}
      response: {items: "", key: /id}
  - name: activities
    match: {method: GET, path: "/api/v1/activities/{id}"}
    upstream: api
    mode: coalesce
    coalesce:
      key: {path: id}
      max_wait: 1ms
      request:
        method: POST
        path: /api/v1/batch/get
        encoding: json_body
        body: {resource_type: activities, ids: "{items}"}
      response: {items: /results, key: /id, status: /status, status_map: {success: 200, error: 502},
                 status_code: /status_code, body: /data, error: /error}
)";

std::shared_ptr<const batchgate::config::gateway_config> config_for(unsigned short port,
                                                                    std::map<std::string, std::string> values = {}) {
    values.emplace("PORT", std::to_string(port));
    values.emplace("LIMIT", "{limit: adaptive}");
    values.emplace("USERS_TIMEOUT", "10s");
    values.emplace("FLUSH", "adaptive");
    values.emplace("WAIT", "5s");
    values.emplace("MAX_WAITING", "10000");
    return load_yaml(fill(yaml, values));
}

// A mock upstream that takes `latency` for every call, two threads.
mock_options slow_mock(std::chrono::milliseconds latency) {
    mock_options o;
    o.latency = latency;
    o.threads = 2;
    return o;
}

// A waiting caller's hang-up is seen when its socket turns readable (an event, not a timer) and
// counted only when its batch is cut (callers_left_total), after the held call returns: nothing
// shows it before, so give the event loop time to see it. Generous (a loaded TSan run included);
// the held call's request_timeout (5 s) is far off.
void seen_leaving() { std::this_thread::sleep_for(1s); }

std::string waiting_callers(const std::string& route) {
    return R"(batchgate_waiting_callers{route=")" + route + R"("})";
}

// Batch calls the route sent, by every flush reason.
double flushes(running_gateway& gw, const std::string& route) {
    double n = 0;
    for (const char* reason : {"size", "bytes", "timer", "shutdown", "released", "idle", "returned"})
        n += gw.metric(std::string(R"(batchgate_batch_flushes_total{reason=")") + reason + R"(",route=")" + route + R"("})");
    return n;
}

std::set<std::string> ids_of(const batchgate::mock::recorded_call& c) {
    auto v = query_values(c.target, "ids", true);
    return {v.begin(), v.end()};
}

// A connection that sends one request and hangs up without reading the answer.
class leaving_caller {
public:
    leaving_caller(unsigned short port, const std::string& request) : socket_(ioc_) {
        socket_.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
        net::write(socket_, net::buffer(request));
    }
    // The request and the FIN in one segment: corked, the request waits in the kernel until the
    // shutdown sends both. On a connection that has served a request already (`first`, one the
    // gateway answers itself with a 4xx): a new connection's first request is seen by the
    // reactor twice (the accept, then the socket's registration), the second time with the FIN.
    struct fin_with_request_t {
        std::string first = "GET /no-route-here HTTP/1.1\r\nHost: t\r\n\r\n";
    };
    leaving_caller(unsigned short port, const std::string& request, const fin_with_request_t& how) : socket_(ioc_) {
        socket_.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
        net::write(socket_, net::buffer(how.first));
        beast::flat_buffer buffer;
        http::response<http::string_body> first;
        http::read(socket_, buffer, first);
        if (first.result_int() / 100 != 4 || !first.keep_alive() || buffer.size() != 0)
            throw std::runtime_error("unexpected first answer: " + first.body());
        const int on = 1;
        ::setsockopt(socket_.native_handle(), IPPROTO_TCP, TCP_CORK, &on, sizeof on);
        net::write(socket_, net::buffer(request));
        socket_.shutdown(tcp::socket::shutdown_send);
    }
    void send_more(const std::string& bytes) { net::write(socket_, net::buffer(bytes)); }
    void leave() { socket_.close(); }
    // Reads until the peer closes; what arrived.
    std::string read_all() {
        std::string out;
        beast::error_code ec;
        char buf[4096];
        for (;;) {
            const std::size_t n = socket_.read_some(net::buffer(buf), ec);
            if (ec) break;
            out.append(buf, n);
        }
        return out;
    }

private:
    net::io_context ioc_;
    tcp::socket socket_;
};

}  // namespace

// At low load nobody waits: a lone caller is sent at once (flush reason idle), though max_wait
// is 5 s.
TEST(Adaptive, LoneCallerIsSentAtOnce) {
    mock_upstream up;
    running_gateway gw(config_for(up.port()));
    for (int i = 1; i <= 3; ++i) {
        const auto started = std::chrono::steady_clock::now();
        auto r = get(gw.port(), "/users/" + std::to_string(i));
        ASSERT_EQ(r.status, 200) << r.body;
        EXPECT_EQ(r.json()["id"], std::to_string(i));
        EXPECT_LT(std::chrono::steady_clock::now() - started, 2s) << "the caller waited for max_wait";
    }
    EXPECT_EQ(gw.metric(R"(batchgate_batch_flushes_total{reason="idle",route="users"})"), 3);
    EXPECT_EQ(gw.metric(R"(batchgate_batch_flushes_total{reason="timer",route="users"})"), 0);
    EXPECT_EQ(up.count("GET", "/users"), 3u);
}

// Callers arriving while the partition's call is in flight collect, and go in one call the
// moment it returns (reason returned), long before max_wait.
TEST(Adaptive, CallersArrivingDuringACallGoTogetherWhenItReturns) {
    mock_upstream up(slow_mock(0ms));
    up.hold();  // every call stays in flight until released
    running_gateway gw(config_for(up.port()));
    std::thread first([&] { EXPECT_EQ(get(gw.port(), "/users/1").status, 200); });
    ASSERT_TRUE(eventually(10s, [&] { return up.held() == 1; }));
    std::vector<response> results;
    std::thread others([&] { results = concurrently(10, [&](int i) { return get(gw.port(), "/users/" + std::to_string(10 + i)); }); });
    // All ten wait behind the call in flight; then it returns.
    ASSERT_TRUE(eventually(10s, [&] { return gw.metric(waiting_callers("users")) == 11; }));
    up.release_held();
    first.join();
    others.join();
    for (int i = 0; i < 10; ++i) {
        ASSERT_EQ(results[i].status, 200) << results[i].body;
        EXPECT_EQ(results[i].json()["id"], std::to_string(10 + i));
    }
    EXPECT_EQ(gw.metric(R"(batchgate_batch_flushes_total{reason="timer",route="users"})"), 0) << "they waited for max_wait (5 s)";
    auto calls = calls_to(up, "GET", "/users");
    ASSERT_EQ(calls.size(), 2u);
    EXPECT_EQ(ids_of(calls[0]), (std::set<std::string>{"1"}));
    EXPECT_EQ(ids_of(calls[1]).size(), 10u);
    EXPECT_EQ(gw.metric(R"(batchgate_batch_flushes_total{reason="idle",route="users"})"), 1);
    EXPECT_EQ(gw.metric(R"(batchgate_batch_flushes_total{reason="returned",route="users"})"), 1);
}

// An idle partition behind a full limit: its caller goes as soon as a slot frees (reason
// released), not at max_wait (5 s, longer than the caller's 4 s deadline). Regression: it waited
// for max_wait with the slot free, and got 504.
TEST(Adaptive, CallerBehindAFullLimitGoesWhenASlotFrees) {
    mock_upstream up(slow_mock(0ms));
    up.hold();  // every call stays in flight until released
    running_gateway gw(config_for(up.port(), {{"LIMIT", "{limit: 1}"}, {"USERS_TIMEOUT", "4s"}}));
    std::thread other([&] { EXPECT_EQ(get(gw.port(), "/api/v1/activities/a1").status, 200); });
    ASSERT_TRUE(eventually(10s, [&] { return up.held() == 1; }));
    response r;
    std::thread caller([&] { r = get(gw.port(), "/users/5"); });
    // Held open for the slot (and collecting), not waiting for max_wait.
    ASSERT_TRUE(eventually(10s, [&] { return gw.metric(R"(batchgate_callers_waiting_for_slot{route="users"})") == 1; }));
    up.release_held();
    other.join();
    caller.join();
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.json()["id"], "5");
    EXPECT_EQ(gw.metric(R"(batchgate_batch_flushes_total{reason="released",route="users"})"), 1);
    EXPECT_EQ(gw.metric(R"(batchgate_batch_flushes_total{reason="timer",route="users"})"), 0);
}

// One upstream, one shared slot (concurrency limit 1), two routes: the second route's caller
// waits for the first route's call and is sent as soon as it ends.
TEST(ConcurrencyLimit, SharedByTheUpstreamsRoutesAndAFreedSlotWakesTheOtherRoute) {
    mock_upstream up(slow_mock(0ms));
    up.hold();  // every call stays in flight until released
    running_gateway gw(config_for(up.port(), {{"LIMIT", "{limit: 1}"}}));
    EXPECT_EQ(gw.metric(R"(batchgate_concurrency_limit{route="*",upstream="api"})"), 1);
    std::thread users([&] { EXPECT_EQ(get(gw.port(), "/users/1").status, 200); });
    ASSERT_TRUE(eventually(10s, [&] { return up.held() == 1; }));
    response a;
    std::thread activities([&] { a = get(gw.port(), "/api/v1/activities/a1"); });
    // Queued for the shared slot (not merely waiting in its window, nor sent).
    ASSERT_TRUE(eventually(10s, [&] { return gw.metric(R"(batchgate_callers_waiting_for_slot{route="activities"})") == 1; }));
    EXPECT_EQ(up.calls().size(), 1u) << "the other route's call went beside the users call";
    up.release_held();
    users.join();
    activities.join();
    EXPECT_EQ(up.max_observed_concurrency(), 1u) << "two calls were in flight at once";
    ASSERT_EQ(a.status, 200) << a.body;
    EXPECT_EQ(a.json()["id"], "a1");
    auto calls = up.calls();
    ASSERT_EQ(calls.size(), 2u);
    EXPECT_EQ(calls[0].path, "/users");
    EXPECT_EQ(calls[1].path, "/api/v1/batch/get") << "sent after the users call, not beside it";
    // The slot is given back after the answers are posted.
    EXPECT_EQ(gw.metric_reaching(R"(batchgate_batches_in_flight{route="*",upstream="api"})", 0), 0);
}

// Queue deadline: a caller whose deadline passes while its batch waits for a slot is answered at
// its deadline, with a JSON body, not when the slot frees; and its batch is never sent.
TEST(QueueDeadline, CallerIsAnsweredAtItsDeadlineAndNeverSent) {
    mock_upstream up(slow_mock(0ms));
    running_gateway gw(config_for(up.port(), {{"LIMIT", "{limit: 1}"}, {"USERS_TIMEOUT", "300ms"}}));
    // A quick call first: the upstream's quickest round trip is then short, so that the later
    // caller below (300 ms deadline) is worth sending despite the held call's long one.
    ASSERT_EQ(get(gw.port(), "/api/v1/activities/a2").status, 200);
    up.hold();
    std::thread slow([&] {  // takes the upstream's only slot until released
        auto r = get(gw.port(), "/api/v1/activities/a1");
        EXPECT_EQ(r.status, 200) << r.body;
    });
    ASSERT_TRUE(eventually(10s, [&] { return up.held() == 1; }));
    auto r = get(gw.port(), "/users/2");  // answered while the slot is still taken
    EXPECT_EQ(r.status, 504) << r.body;
    EXPECT_EQ(r.json()["error"], "upstream_timeout") << r.body;
    EXPECT_NE(r.json()["message"].get<std::string>().find("deadline passed before its batch could be sent"),
              std::string::npos)
        << r.body;
    // (The gauge is set just after the answer goes out.) Forgotten before the slot frees.
    EXPECT_TRUE(eventually(10s, [&] { return gw.metric(waiting_callers("users")) == 0; }))
        << "still counted toward max_waiting";
    EXPECT_EQ(up.held(), 1u);
    up.release_held();
    slow.join();
    // A later caller's batch: had the answered caller's batch been kept, it would go first.
    auto later = get(gw.port(), "/users/3");
    ASSERT_EQ(later.status, 200) << later.body;
    auto users_calls = calls_to(up, "GET", "/users");
    ASSERT_EQ(users_calls.size(), 1u) << "the batch of a caller already answered went upstream";
    EXPECT_EQ(ids_of(users_calls[0]), (std::set<std::string>{"3"}));
    EXPECT_EQ(flushes(gw, "users"), 1) << "a batch that made no call was counted as sent";
    EXPECT_EQ(gw.metric(R"(batchgate_upstream_calls_saved_total{route="users"})"), 0);
}

// coalesce.max_waiting: a caller over it is answered 503 with Retry-After at once, exactly once
// (no second answer follows on its connection), and its connection serves its next request. The
// caller who waits is not disturbed: it goes alone when its window ends. With one worker thread
// the refused caller's connection and the partition's batcher share it (no post between them);
// with more, either.
TEST(Overload, ACallerOverMaxWaitingGetsOne503AndKeepsItsConnection) {
    mock_upstream up;
    running_gateway gw(config_for(up.port(), {{"FLUSH", "window"}, {"WAIT", "3s"}, {"MAX_WAITING", "1"}}));
    response first;
    std::thread waiting([&] { first = get(gw.port(), "/users/1"); });
    ASSERT_TRUE(eventually(10s, [&] { return gw.metric(waiting_callers("users")) == 1; }));

    kept_alive_client client(gw.port(), 10);
    auto ask = [&](const std::string& target) { return client.get(target); };
    auto refused = ask("/users/2");
    EXPECT_EQ(refused.result_int(), 503) << refused.body();
    EXPECT_EQ(refused["Retry-After"], "1");
    EXPECT_EQ(refused[http::field::content_type], "application/json");
    const auto body = json::parse(refused.body(), nullptr, false);
    EXPECT_EQ(body.value("error", ""), "overloaded") << refused.body();
    EXPECT_NE(body.value("message", "").find("too many callers waiting"), std::string::npos) << refused.body();
    EXPECT_TRUE(refused.keep_alive());
    EXPECT_EQ(client.leftover(), 0u) << "bytes after the 503";
    EXPECT_EQ(gw.metric(R"(batchgate_callers_rejected_total{route="users"})"), 1);

    // The same connection, next request: another route, served.
    auto next = ask("/api/v1/activities/a1");
    EXPECT_EQ(next.result_int(), 200) << next.body();
    EXPECT_EQ(json::parse(next.body(), nullptr, false).value("id", ""), "a1") << next.body();
    EXPECT_EQ(client.leftover(), 0u);

    waiting.join();
    ASSERT_EQ(first.status, 200) << first.body;
    EXPECT_EQ(first.json()["id"], "1");
    auto users_calls = calls_to(up, "GET", "/users");
    ASSERT_EQ(users_calls.size(), 1u);
    EXPECT_EQ(ids_of(users_calls[0]), (std::set<std::string>{"1"})) << "the refused caller's key went upstream";
    // Once the first caller was answered, room again: the refused key is served.
    EXPECT_TRUE(eventually(10s, [&] { return gw.metric(waiting_callers("users")) == 0; }));
    auto again = ask("/users/2");
    EXPECT_EQ(again.result_int(), 200) << again.body();
    EXPECT_EQ(gw.metric(R"(batchgate_callers_rejected_total{route="users"})"), 1);
}

// Alice holds the upstream's only slot; bob and carol wait behind her in one batch. Bob hangs
// up: after carol came (`fin_with_request` false), or with his request, his FIN right behind it.
// Nothing is sent for him; carol is served.
void departed_read_is_never_sent(bool fin_with_request) {
    mock_upstream up(slow_mock(0ms));
    up.hold();  // every call stays in flight until released
    running_gateway gw(config_for(up.port(), {{"LIMIT", "{limit: 1}"}}));
    std::thread first([&] { EXPECT_EQ(get(gw.port(), "/users/1").status, 200); });
    ASSERT_TRUE(eventually(10s, [&] { return up.held() == 1; }));
    const std::string request = "GET /users/2 HTTP/1.1\r\nHost: t\r\n\r\n";
    std::optional<leaving_caller> bob;
    if (fin_with_request)
        bob.emplace(gw.port(), request, leaving_caller::fin_with_request_t{});
    else
        bob.emplace(gw.port(), request);
    ASSERT_TRUE(eventually(10s, [&] { return gw.metric(waiting_callers("users")) == 2; }));
    response carol;
    std::thread third([&] { carol = get(gw.port(), "/users/3"); });
    ASSERT_TRUE(eventually(10s, [&] { return gw.metric(waiting_callers("users")) == 3; }));
    if (!fin_with_request) bob->leave();
    // A FIN that came with the request is looked for a tick or two of the sweep later.
    seen_leaving();
    up.release_held();
    first.join();
    third.join();
    ASSERT_EQ(carol.status, 200) << carol.body;
    auto calls = calls_to(up, "GET", "/users");
    ASSERT_EQ(calls.size(), 2u);
    EXPECT_EQ(ids_of(calls[1]), (std::set<std::string>{"3"})) << "bob's item was sent after he left";
    EXPECT_EQ(gw.metric(R"(batchgate_callers_left_total{route="users"})"), 1);
}

TEST(DepartedCaller, ReadIsNeverSent) { departed_read_is_never_sent(false); }

// One edge brings bob's request and his FIN: the read of the request drains the socket, and the
// hang-up watch's first look (a peek of its own a tick or two later, since the reactor waits for
// the next edge after a drained read: net/swept_stream.hpp) sees him gone.
TEST(DepartedCaller, ACallerWhoseFinCameWithTheRequestIsNeverSent) { departed_read_is_never_sent(true); }

// A write nobody waits for any more is not applied; the write beside it is. Bob hangs up after
// carol came, or with his request (`fin_with_request`): a writer's first look is at once, so
// nothing waits for it before the batch is released.
void departed_write_is_not_applied(bool fin_with_request) {
    mock_upstream up(slow_mock(0ms));
    up.hold();  // every call stays in flight until released
    running_gateway gw(load_yaml(example_config_text("abilities.yaml", up.port(), "5s", "adaptive")));
    auto patch = [&](int ability, int score) {
        return call(gw.port(), "PATCH", "/api/characters/7/abilities/" + std::to_string(ability),
                    {{"action", "increment"}, {"data", {{"score", score}, {"experience_points", 0}}}});
    };
    std::thread alice([&] { EXPECT_EQ(patch(1, 1).status, 200); });
    ASSERT_TRUE(eventually(10s, [&] { return up.held() == 1; }));
    const std::string body = R"({"action":"increment","data":{"score":10,"experience_points":0}})";
    const std::string request = "PATCH /api/characters/7/abilities/1 HTTP/1.1\r\nHost: t\r\n"
                                "Content-Type: application/json\r\nContent-Length: " +
                                std::to_string(body.size()) + "\r\n\r\n" + body;
    std::optional<leaving_caller> bob;
    if (fin_with_request)  // first a PATCH the route refuses (400: its body is no JSON)
        bob.emplace(gw.port(), request,
                    leaving_caller::fin_with_request_t{"PATCH /api/characters/7/abilities/1 HTTP/1.1\r\nHost: t\r\n"
                                                       "Content-Type: application/json\r\nContent-Length: 1\r\n\r\n{"});
    else
        bob.emplace(gw.port(), request);
    ASSERT_TRUE(eventually(10s, [&] { return gw.metric(waiting_callers("abilities")) == 2; }));
    response carol;
    std::thread third([&] { carol = patch(2, 5); });
    ASSERT_TRUE(eventually(10s, [&] { return gw.metric(waiting_callers("abilities")) == 3; }));
    if (!fin_with_request) {
        bob->leave();
        seen_leaving();
    }
    up.release_held();
    alice.join();
    third.join();
    ASSERT_EQ(carol.status, 200) << carol.body;
    EXPECT_EQ(carol.json()["score"], 5);
    EXPECT_EQ(up.ability("7", 1), (ability_state{1, 0})) << "bob's increment was applied after he left";
    EXPECT_EQ(up.ability("7", 2), (ability_state{5, 0}));
    auto batches = calls_to(up, "POST", "/api/characters/7/abilities/batch");
    ASSERT_EQ(batches.size(), 2u);
    EXPECT_EQ(json::parse(batches[1].body)["operations"].size(), 1u);
    EXPECT_EQ(gw.metric(R"(batchgate_callers_left_total{route="abilities"})"), 1);
}

TEST(DepartedCaller, WriteIsNotApplied) { departed_write_is_not_applied(false); }

TEST(DepartedCaller, AWriteWhoseFinCameWithTheRequestIsNeverApplied) { departed_write_is_not_applied(true); }

// 429 is the upstream saying "too many": the shared limit is cut (x0.7 per round trip of
// refusals), and shows so in its gauge. The callers get the 429 (after the route's retries).
TEST(ConcurrencyLimit, UpstreamRefusalsCutTheSharedLimit) {
    mock_options o;
    o.fault_rate = 1;
    o.fault_kinds = 1u << static_cast<unsigned>(batchgate::mock::random_fault::status_429);
    mock_upstream up(o);
    running_gateway gw(config_for(up.port(), {{"LIMIT", "{limit: adaptive, initial: 20, min: 2, max: 40}"}}));
    EXPECT_EQ(gw.metric(R"(batchgate_concurrency_limit{route="*",upstream="api"})"), 20);
    for (int i = 0; i < 3; ++i) {
        auto r = get(gw.port(), "/users/" + std::to_string(i + 1));
        EXPECT_EQ(r.status, 429) << r.body;
    }
    // Each refused call was sent after the previous cut: 20 -> 14 -> 9 -> 6 (3 calls per caller
    // with retries: 9 cuts in all, floored at min 2).
    const double limit = gw.metric(R"(batchgate_concurrency_limit{route="*",upstream="api"})");
    EXPECT_LE(limit, 6);
    EXPECT_GE(limit, 2);
}

namespace {

std::string patch_request(int ability, int score, bool close = false) {
    const std::string body =
        R"({"action":"increment","data":{"score":)" + std::to_string(score) + R"(,"experience_points":0}})";
    return "PATCH /api/characters/7/abilities/" + std::to_string(ability) + " HTTP/1.1\r\nHost: t\r\n" +
           (close ? "Connection: close\r\n" : "") + "Content-Type: application/json\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\n\r\n" + body;
}

// Ability 7/1 busy upstream (alice's call, held by the mock), then run `bob` while alice waits;
// alice's call returns once bob() has.
template <class Bob>
void behind_a_busy_partition(mock_upstream& up, running_gateway& gw, Bob bob) {
    up.hold();
    std::thread alice([&] {
        auto r = call(gw.port(), "PATCH", "/api/characters/7/abilities/1",
                      {{"action", "increment"}, {"data", {{"score", 1}, {"experience_points", 0}}}});
        EXPECT_EQ(r.status, 200) << r.body;
    });
    EXPECT_TRUE(eventually(10s, [&] { return up.held() == 1; }));
    bob();
    up.release_held();
    alice.join();
}

}  // namespace

// Bytes after the request (here the CRLF some old clients add after a body) must not hide a
// hang-up that follows them.
TEST(DepartedCaller, BytesAfterTheRequestDoNotHideALaterHangUp) {
    mock_upstream up(slow_mock(0ms));
    running_gateway gw(load_yaml(example_config_text("abilities.yaml", up.port(), "5s", "adaptive")));
    behind_a_busy_partition(up, gw, [&] {
        leaving_caller bob(gw.port(), patch_request(1, 10));
        ASSERT_TRUE(eventually(5s, [&] { return gw.metric(R"(batchgate_waiting_callers{route="abilities"})") == 2; }));
        bob.send_more("\r\n");
        std::this_thread::sleep_for(50ms);
        bob.leave();
        seen_leaving();
    });
    EXPECT_EQ(gw.metric_reaching(R"(batchgate_callers_left_total{route="abilities"})", 1), 1);
    EXPECT_EQ(up.ability("7", 1), (ability_state{1, 0})) << "bob's increment was applied after he left";
}

// A caller who pipelines two writes and leaves: neither is applied. Its second request, already
// read into the gateway's buffer, is not served for a client that is gone.
TEST(DepartedCaller, PipelinedWritesOfACallerWhoLeftAreNotApplied) {
    mock_upstream up(slow_mock(0ms));
    running_gateway gw(load_yaml(example_config_text("abilities.yaml", up.port(), "5s", "adaptive")));
    behind_a_busy_partition(up, gw, [&] {
        leaving_caller bob(gw.port(), patch_request(1, 10) + patch_request(1, 100));
        ASSERT_TRUE(eventually(5s, [&] { return gw.metric(R"(batchgate_waiting_callers{route="abilities"})") == 2; }));
        bob.leave();
        seen_leaving();
    });
    EXPECT_EQ(gw.metric_reaching(R"(batchgate_callers_left_total{route="abilities"})", 1), 1);
    std::this_thread::sleep_for(300ms);  // a second batch, were bob's next request served
    EXPECT_EQ(up.ability("7", 1), (ability_state{1, 0}));
    EXPECT_EQ(calls_to(up, "POST", "/api/characters/7/abilities/batch").size(), 1u);
}

// The other side: a caller who pipelines and stays is served in order, never taken as gone.
TEST(DepartedCaller, PipelinedCallerWhoStaysIsServedInOrder) {
    mock_upstream up(slow_mock(0ms));
    running_gateway gw(load_yaml(example_config_text("abilities.yaml", up.port(), "5s", "adaptive")));
    std::optional<leaving_caller> bob;
    behind_a_busy_partition(up, gw, [&] {
        bob.emplace(gw.port(), patch_request(1, 10) + patch_request(1, 100, /*close=*/true));
        ASSERT_TRUE(eventually(10s, [&] { return gw.metric(waiting_callers("abilities")) == 2; }));
    });
    ASSERT_TRUE(bob.has_value());
    const std::string answers = bob->read_all();
    std::regex status(R"(HTTP/1\.1 (\d+))");
    std::vector<std::string> statuses;
    for (std::sregex_iterator it(answers.begin(), answers.end(), status), end; it != end; ++it)
        statuses.push_back((*it)[1]);
    EXPECT_EQ(statuses, (std::vector<std::string>{"200", "200"})) << answers;
    EXPECT_NE(answers.find(R"("score":11)"), std::string::npos) << answers;
    EXPECT_NE(answers.find(R"("score":111)"), std::string::npos) << answers;
    EXPECT_EQ(up.ability("7", 1), (ability_state{111, 0}));
    EXPECT_EQ(gw.metric(R"(batchgate_callers_left_total{route="abilities"})"), 0);
}

// A caller whose time left is shorter than the upstream's quickest batch call so far could only
// time out after its write was applied: when a slot frees for it that late, it is answered 504
// and not sent.
TEST(QueueDeadline, CallerWithLessTimeLeftThanARoundTripIsNotSent) {
    mock_upstream up(slow_mock(400ms));
    running_gateway gw(config_for(up.port(), {{"LIMIT", "{limit: 1}"}, {"USERS_TIMEOUT", "600ms"}}));
    ASSERT_EQ(get(gw.port(), "/users/1").status, 200);  // the gateway learns: 400 ms a call
    std::thread alice([&] { EXPECT_EQ(get(gw.port(), "/users/2").status, 200); });
    ASSERT_TRUE(eventually(5s, [&] { return up.count("GET", "/users") == 2; }));
    auto bob = get(gw.port(), "/users/3");  // the slot frees with ~250 ms of bob's 600 left
    alice.join();
    EXPECT_EQ(bob.status, 504) << bob.body;
    EXPECT_NE(bob.body.find("before the upstream could answer"), std::string::npos) << bob.body;
    std::this_thread::sleep_for(100ms);
    EXPECT_EQ(up.count("GET", "/users"), 2u) << "bob's batch was sent with too little time to be answered";
}

// A batch whose every caller left makes no call, and is not counted as one.
TEST(DepartedCaller, BatchEveryoneLeftMakesNoCallAndCountsNone) {
    mock_upstream up(slow_mock(0ms));
    up.hold();  // every call stays in flight until released
    running_gateway gw(config_for(up.port(), {{"LIMIT", "{limit: 1}"}}));
    std::thread first([&] { EXPECT_EQ(get(gw.port(), "/users/1").status, 200); });
    ASSERT_TRUE(eventually(10s, [&] { return up.held() == 1; }));
    {
        leaving_caller bob(gw.port(), "GET /users/2 HTTP/1.1\r\nHost: t\r\n\r\n");
        ASSERT_TRUE(eventually(10s, [&] { return gw.metric(waiting_callers("users")) == 2; }));
        bob.leave();
    }
    seen_leaving();
    up.release_held();
    first.join();
    ASSERT_EQ(gw.metric_reaching(R"(batchgate_callers_left_total{route="users"})", 1), 1);
    EXPECT_EQ(up.count("GET", "/users"), 1u);
    EXPECT_EQ(flushes(gw, "users"), 1) << "only the first caller's call was made";
    EXPECT_EQ(gw.metric(R"(batchgate_batch_size_count{route="users"})"), 1);
}
