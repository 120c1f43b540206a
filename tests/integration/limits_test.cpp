// Inputs that used to kill the process or grow it without bound: JSON nested tens of thousands
// deep (from a caller or an upstream), coalesced items larger than the batch byte limit.
// Every one gets its own error; the process and every other caller carry on.
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "tests/integration/harness.hpp"

using namespace batchgate::testing;
using batchgate::mock::fault;
using batchgate::mock::mock_options;
using batchgate::mock::mock_upstream;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

const char* yaml = R"(
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
worker_threads: 2
logging: {access_log: false}
limits: {{LIMITS}}
upstreams:
  api: {url: "http://127.0.0.1:{{PORT}}", request_timeout: 5s}
routes:
  - name: users
    match: {method: GET, path: "/users/{id}"}
    upstream: api
    mode: coalesce
    coalesce:
      key: {path: id}
      max_wait: 2ms
      request: {method: GET, path: /users, encoding: query_list, query_param: ids}
      response: {items: "", key: /id}
  - name: progress
    match: {method: POST, path: /api/client/progress}
    upstream: api
    mode: coalesce
    coalesce:
      key: {body: /clientEventId}
      max_wait: 2ms
      max_batch_items: 25
      max_batch_bytes: 4KB
      request: {method: POST, path: /api/client/progress/batch, encoding: json_body, body: {events: "{items}"}, item: "{body}"}
      response:
        lists:
          - {items: /accepted, key: "", status: 202, body_value: {status: accepted}}
          - {items: /duplicates, key: "", status: 200, body_value: {status: duplicate}}
          - {items: /failed, key: /id, status: 422}
  - name: activities_fan_out
    match: {method: POST, path: /api/v1/batch/get}
    upstream: api
    mode: fan_out
    fan_out:
      items: /ids
      request: {method: GET, path: "/api/v1/activities/{item}"}
  - name: batch
    match: {method: POST, path: "/$batch"}
    mode: batch_envelope
  - name: everything
    match: {prefix: /}
    upstream: api
)";

std::shared_ptr<const batchgate::config::gateway_config> config_for(unsigned short port, std::string limits = "{}") {
    return load_yaml(fill(yaml, {{"PORT", std::to_string(port)}, {"LIMITS", limits}}));
}

std::string nested(std::size_t depth) { return std::string(depth, '[') + std::string(depth, ']'); }

json event(const std::string& id) {
    return json{{"type", "lesson_progress"}, {"courseId", "foundations"}, {"lessonId", "lesson-video"},
                {"userId", "demo-user"},     {"percent", 40},             {"position", 185},
                {"timestamp", 1730956800000}, {"clientEventId", id}};
}

const std::map<std::string, std::string> json_type{{"Content-Type", "application/json"}};

}  // namespace

// A 120 KB body nested 60,000 deep used to end in SIGSEGV for every caller on every connection.
TEST(JsonDepth, DeeplyNestedCallerBodiesGet400NamingTheLimitAndReachNoUpstream) {
    mock_upstream up;
    running_gateway gw(config_for(up.port()));
    const std::string deep = nested(60000);

    auto progress = send_request(gw.port(), "POST", "/api/client/progress",
                                 R"({"clientEventId":"e-1","x":)" + deep + "}", json_type);
    EXPECT_EQ(progress.status, 400) << progress.body;
    EXPECT_NE(progress.body.find("limits.max_json_depth (64)"), std::string::npos) << progress.body;
    EXPECT_EQ(progress.json()["route"], "progress");

    auto fan = send_request(gw.port(), "POST", "/api/v1/batch/get", R"({"ids":["a1"],"x":)" + deep + "}", json_type);
    EXPECT_EQ(fan.status, 400) << fan.body;
    EXPECT_NE(fan.body.find("limits.max_json_depth"), std::string::npos) << fan.body;

    // The envelope itself, and a sub-request whose body is deep JSON text in a string.
    auto env = send_request(gw.port(), "POST", "/$batch",
                            R"({"requests":[{"id":"1","method":"POST","url":"/api/client/progress","body":)" + deep + "}]}",
                            json_type);
    EXPECT_EQ(env.status, 400) << env.body;
    json sub{{"requests",
              {{{"id", "deep"}, {"method", "POST"}, {"url", "/api/client/progress"},
                {"headers", {{"Content-Type", "application/json"}}},
                {"body", R"({"clientEventId":"e-2","x":)" + deep + "}"}},
               {{"id", "fine"}, {"method", "POST"}, {"url", "/api/client/progress"}, {"body", event("e-3")}}}}};
    auto subs = send_request(gw.port(), "POST", "/$batch", sub.dump(), json_type);
    ASSERT_EQ(subs.status, 200) << subs.body;
    auto responses = subs.json()["responses"];
    ASSERT_EQ(responses.size(), 2u) << subs.body;
    for (const auto& r : responses) {
        if (r["id"] == "deep") {
            EXPECT_EQ(r["status"], 400) << r.dump();
        } else {
            EXPECT_EQ(r["status"], 202) << r.dump();
        }
    }

    EXPECT_FALSE(up.progress_event_seen("e-1"));
    EXPECT_FALSE(up.progress_event_seen("e-2"));
    EXPECT_TRUE(up.progress_event_seen("e-3"));
    EXPECT_EQ(up.count("GET", "/api/v1/activities/a1"), 0u);
    // The process is alive and serves everyone else.
    EXPECT_EQ(send_request(gw.port(), "POST", "/api/client/progress", event("e-4").dump(), json_type).status, 202);
    EXPECT_EQ(get(gw.port(), "/users/7").status, 200);
}

// A body within the default is served, and limits.max_json_depth moves the bound.
TEST(JsonDepth, TheLimitIsAConfigKey) {
    mock_upstream up;
    running_gateway gw(config_for(up.port(), "{max_json_depth: 3}"));
    json ok = event("d-1");
    ok["extra"] = json::parse("[[1]]");  // depth 3 with the event object
    EXPECT_EQ(send_request(gw.port(), "POST", "/api/client/progress", ok.dump(), json_type).status, 202);
    json deep = event("d-2");
    deep["extra"] = json::parse("[[[1]]]");  // depth 4
    auto r = send_request(gw.port(), "POST", "/api/client/progress", deep.dump(), json_type);
    EXPECT_EQ(r.status, 400) << r.body;
    EXPECT_NE(r.body.find("limits.max_json_depth (3)"), std::string::npos) << r.body;
    // Brackets inside strings are text, not nesting.
    json text = event("d-3");
    text["note"] = std::string(100, '[');
    EXPECT_EQ(send_request(gw.port(), "POST", "/api/client/progress", text.dump(), json_type).status, 202);
    EXPECT_FALSE(up.progress_event_seen("d-2"));
}

// An upstream batch answer nested 100,000 deep fails its own batch (502), never the process.
TEST(JsonDepth, DeeplyNestedUpstreamAnswersAre502ForTheirBatchOnly) {
    mock_upstream up;
    running_gateway gw(config_for(up.port()));
    up.set_fault(fault::deep_json);
    auto r = get(gw.port(), "/users/7");
    EXPECT_EQ(r.status, 502) << r.body;
    EXPECT_NE(r.body.find("limits.max_json_depth (64)"), std::string::npos) << r.body;

    // Passed through as a $batch entry, the same answer is that entry's 502.
    auto env = send_request(gw.port(), "POST", "/$batch",
                            R"({"requests":[{"id":"1","method":"GET","url":"/users?ids=7"}]})", json_type);
    ASSERT_EQ(env.status, 200) << env.body;
    EXPECT_EQ(env.json()["responses"][0]["status"], 502) << env.body;

    up.set_fault(fault::none);
    auto again = get(gw.port(), "/users/8");
    EXPECT_EQ(again.status, 200) << again.body;
    EXPECT_EQ(again.json()["id"], "8");
}

// One event over the route's max_batch_bytes went upstream anyway (and the upstream's 413
// failed the whole batch); now that caller alone gets 413 naming the limit.
TEST(BatchBytes, AnItemLargerThanMaxBatchBytesIs413ForThatCallerOnly) {
    mock_upstream up;
    running_gateway gw(config_for(up.port()));
    json big = event("big-1");
    big["pad"] = std::string(5000, 'x');
    auto results = concurrently(2, [&](int i) {
        return send_request(gw.port(), "POST", "/api/client/progress", (i == 0 ? big : event("small-1")).dump(), json_type);
    });
    EXPECT_EQ(results[0].status, 413) << results[0].body;
    EXPECT_NE(results[0].body.find("coalesce.max_batch_bytes (4000)"), std::string::npos) << results[0].body;
    EXPECT_EQ(results[1].status, 202) << results[1].body;
    EXPECT_FALSE(up.progress_event_seen("big-1"));
    EXPECT_TRUE(up.progress_event_seen("small-1"));
}

namespace {
std::size_t open_fds() {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
    return n;
}
}  // namespace

// Callers still queued when drain_timeout passes (a stalled upstream) are answered 503 by
// their connections; their handlers, held by the batcher and the pool, used to keep sessions,
// snapshot, batcher and pool alive in a cycle past the gateway's end: leaked memory (LSan) and
// the pool's upstream sockets still open.
TEST(Drain, CallersQueuedAtTheDrainDeadlineLeakNothing) {
    const std::size_t before = open_fds();
    {
        mock_upstream up;
        const std::string yaml_text = fill(yaml, {{"PORT", std::to_string(up.port())}, {"LIMITS", "{drain_timeout: 1s}"}});
        std::string stalled = yaml_text;
        stalled.replace(stalled.find("max_wait: 2ms"), 13, "max_wait: 2ms\n      max_concurrent_batches: 1");
        std::vector<response> answers(20);
        std::vector<std::thread> callers;
        {
            running_gateway gw(load_yaml(stalled));
            up.set_fault(fault::stall);
            for (int i = 0; i < 20; ++i)
                callers.emplace_back([&, i] { answers[i] = get(gw.port(), "/users/" + std::to_string(i + 1)); });
            // Bounded wait until the first batch is stalled upstream and every caller is queued.
            for (int i = 0; i < 400 && gw.metric(R"(batchgate_waiting_callers{route="users"})") != 20; ++i)
                std::this_thread::sleep_for(10ms);
            ASSERT_EQ(gw.metric(R"(batchgate_waiting_callers{route="users"})"), 20);
            gw.stop();
        }
        for (auto& t : callers) t.join();
        for (const auto& a : answers) EXPECT_EQ(a.status, 503) << a.body;
        up.stop();
    }
    EXPECT_EQ(open_fds(), before) << "sockets of the gateway outlived it";
}

namespace {
// A connected socket that sends one request and then never reads.
struct stalled_client {
    net::io_context ioc;
    tcp::socket socket{ioc};
    stalled_client(unsigned short port, const std::string& request) {
        socket.open(tcp::v4());
        socket.set_option(net::socket_base::receive_buffer_size(4096));
        socket.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
        if (!request.empty()) net::write(socket, net::buffer(request));
    }
};

std::string get_large(std::size_t bytes) {
    return "GET /large?bytes=" + std::to_string(bytes) + " HTTP/1.1\r\nHost: t\r\n\r\n";
}
}  // namespace

// The process must never run out of descriptors on its own: past limits.max_connections a
// client gets a 503 and is closed, and the others are served.
TEST(Connections, OverMaxConnectionsA503AndTheRestServed) {
    mock_upstream up;
    running_gateway gw(config_for(up.port(), "{max_connections: 3}"));
    std::vector<std::unique_ptr<stalled_client>> idle;
    for (int i = 0; i < 3; ++i) idle.push_back(std::make_unique<stalled_client>(gw.port(), ""));
    for (int i = 0; i < 300 && gw.metric("batchgate_open_connections") != 3; ++i) std::this_thread::sleep_for(10ms);
    ASSERT_EQ(gw.metric("batchgate_open_connections"), 3);

    const std::string refused = send_raw(gw.port(), "GET /users/1 HTTP/1.1\r\nHost: t\r\n\r\n");
    EXPECT_EQ(refused.rfind("HTTP/1.1 503 ", 0), 0u) << refused;
    EXPECT_NE(refused.find("limits.max_connections"), std::string::npos) << refused;
    EXPECT_NE(refused.find("Retry-After: 1"), std::string::npos) << refused;
    EXPECT_EQ(gw.metric(R"(batchgate_connections_refused_total{reason="max_connections"})"), 1);

    idle.pop_back();
    for (int i = 0; i < 300 && gw.metric("batchgate_open_connections") != 2; ++i) std::this_thread::sleep_for(10ms);
    EXPECT_EQ(get(gw.port(), "/users/1").status, 200);

    // The admin listener has its own small cap: its connections are not counted above, and
    // without one they could take every descriptor.
    std::vector<std::unique_ptr<stalled_client>> admin;
    for (int i = 0; i < 32; ++i) admin.push_back(std::make_unique<stalled_client>(gw.admin_port(), ""));
    std::string over;
    for (int i = 0; i < 100 && over.empty(); ++i) {
        over = send_raw(gw.admin_port(), "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        if (over.rfind("HTTP/1.1 503 ", 0) != 0) {
            over.clear();  // an admin connection above was not accepted yet
            std::this_thread::sleep_for(10ms);
        }
    }
    EXPECT_EQ(over.rfind("HTTP/1.1 503 ", 0), 0u) << over;
    admin.clear();
    std::string ok;
    for (int i = 0; i < 100 && ok.rfind("HTTP/1.1 200 ", 0) != 0; ++i) {
        std::this_thread::sleep_for(10ms);
        ok = send_raw(gw.admin_port(), "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    }
    EXPECT_EQ(ok.rfind("HTTP/1.1 200 ", 0), 0u) << ok;
}

// Out of descriptors, accept() fails with EMFILE and the connection stays in the backlog:
// re-arming at once used to spin (1.5 cores, 162 MB of log lines in 10 s). Now the listener
// pauses, and the waiting clients are served once descriptors are free again.
TEST(Connections, OutOfDescriptorsTheListenerPausesInsteadOfSpinning) {
    mock_upstream up;
    running_gateway gw(config_for(up.port()));
    // Client sockets made first: connecting needs no new descriptor, accepting does.
    std::vector<std::unique_ptr<net::io_context>> ioc;
    std::vector<std::unique_ptr<tcp::socket>> clients;
    for (int i = 0; i < 3; ++i) {
        ioc.push_back(std::make_unique<net::io_context>());
        clients.push_back(std::make_unique<tcp::socket>(*ioc.back()));
        clients.back()->open(tcp::v4());
    }
    rlimit saved{};
    ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
    rlimit tight = saved;
    const int lowest_free = ::dup(0);  // every descriptor the gateway asks for now is above it
    ASSERT_GE(lowest_free, 0);
    ::close(lowest_free);
    tight.rlim_cur = static_cast<rlim_t>(lowest_free);
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &tight), 0);
    for (auto& c : clients) c->connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), gw.port()));
    std::this_thread::sleep_for(500ms);  // real time on purpose: the spin was measured in wall time
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &saved), 0);

    const double failures = gw.metric(R"(batchgate_connections_refused_total{reason="accept_error"})");
    EXPECT_GE(failures, 1) << "accept() never failed: the test did not exhaust descriptors";
    // Each worker thread's listener pauses 100 ms after a failed accept: a handful of failures
    // each in the 500 ms (10 seen with one thread), where a spinning one makes thousands.
    const double bound = 20.0 * gw.server().worker_threads();
    EXPECT_LE(failures, bound) << "a listener re-armed at once after EMFILE";
    for (auto& c : clients) {
        const std::string req = "GET /users/2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
        net::write(*c, net::buffer(req));
        std::string got;
        beast::error_code ec;
        char buf[4096];
        for (std::size_t n; (n = c->read_some(net::buffer(buf), ec)) > 0 && !ec;) got.append(buf, n);
        EXPECT_EQ(got.rfind("HTTP/1.1 200 ", 0), 0u) << got;
    }
}

// Clients that never read large answers: passthrough streams them, so each stalled reader pins
// one window (charged to limits.max_buffered), never its answer; a reading client is served
// meanwhile, and send_timeout drops the stalled ones, giving the windows back.
TEST(MemoryBudget, ClientsThatNeverReadPinOnlyAWindowEach) {
    mock_upstream up;
    running_gateway gw(config_for(up.port(), "{max_buffered: 15MiB, send_timeout: 2s}"));
    constexpr std::size_t answer = 6 * 1024 * 1024;
    constexpr int stalled_readers = 6;
    std::vector<std::unique_ptr<stalled_client>> stalled;
    for (int i = 0; i < stalled_readers; ++i) stalled.push_back(std::make_unique<stalled_client>(gw.port(), get_large(answer)));
    // Each has its answer's head and first windows in flight, then stalls.
    for (int i = 0; i < 2000 && gw.metric("batchgate_buffered_bytes") < stalled_readers * 64.0 * 1024; ++i)
        std::this_thread::sleep_for(5ms);
    for (int i = 0; i < 100; ++i) {
        EXPECT_LE(gw.metric("batchgate_buffered_bytes"), stalled_readers * 64.0 * 1024) << "more than a window each";
        std::this_thread::sleep_for(5ms);
    }
    // A client that does read gets the whole answer while the others hold their windows.
    auto served = get(gw.port(), "/large?bytes=" + std::to_string(answer));
    EXPECT_EQ(served.status, 200);
    EXPECT_EQ(served.body.size(), answer);

    // send_timeout drops the stalled readers: their windows come back, their streams counted.
    for (int i = 0; i < 1500 && gw.metric("batchgate_buffered_bytes") != 0; ++i) std::this_thread::sleep_for(10ms);
    EXPECT_EQ(gw.metric("batchgate_buffered_bytes"), 0);
    EXPECT_GE(gw.metric("batchgate_send_timeouts_total"), stalled_readers);
    EXPECT_GE(gw.metric(R"(batchgate_stream_aborts_total{route="everything",side="client"})"), stalled_readers);
}

// A stream whose request window does not fit the budget is refused before its body is read
// (and before 100 Continue invites it); a small one still fits.
TEST(MemoryBudget, AStreamTheBudgetCannotHoldIs503BeforeItsBodyIsRead) {
    mock_upstream up;
    running_gateway gw(config_for(up.port(), "{max_buffered: 16KiB}"));
    const std::string head = "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n";
    const std::string got = send_raw(gw.port(), head);
    EXPECT_EQ(got.rfind("HTTP/1.1 503 ", 0), 0u) << got;
    EXPECT_EQ(got.find("100 Continue"), std::string::npos) << "invited a body it cannot hold";
    EXPECT_EQ(gw.metric("batchgate_budget_rejected_total"), 1);
    EXPECT_EQ(up.count("POST", "/echo"), 0u);
    EXPECT_EQ(send_request(gw.port(), "POST", "/echo", std::string(1000, 'x')).status, 200);
}
