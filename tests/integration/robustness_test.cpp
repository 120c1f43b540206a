// Hostile or unusual peers: interim upstream answers, a drain that runs out of time, and
// oversized sub-request headers. Each must still give every caller exactly one answer.
#include <sys/socket.h>

#include <mutex>
#include <atomic>
#include <thread>

#include "tests/integration/harness.hpp"

using namespace batchgate::testing;
using batchgate::mock::fault;
using batchgate::mock::mock_upstream;

namespace {

// A raw upstream that answers every request with `reply` verbatim, on keep-alive connections.
class raw_upstream {
public:
    explicit raw_upstream(std::string reply) : reply_(std::move(reply)), acceptor_(ioc_, {net::ip::make_address("127.0.0.1"), 0}) {
        thread_ = std::thread([this] { serve(); });
    }
    ~raw_upstream() {
        stop_ = true;
        beast::error_code ec;
        // Wake the blocking accept.
        tcp::socket poke(ioc_);
        poke.connect(acceptor_.local_endpoint(), ec);
        thread_.join();
        // Connection threads use ioc_ and reply_: end them before those go (they were once
        // detached, and TSan caught one outliving this object).
        {
            std::lock_guard lock(mutex_);
            for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
        }
        for (auto& c : conns_) c.join();
    }
    unsigned short port() const { return acceptor_.local_endpoint().port(); }
    int requests() const { return requests_.load(); }

private:
    void serve() {
        while (!stop_) {
            tcp::socket s(ioc_);
            beast::error_code ec;
            acceptor_.accept(s, ec);
            if (ec || stop_) break;
            {
                std::lock_guard lock(mutex_);
                fds_.push_back(s.native_handle());
            }
            conns_.emplace_back([this, s = std::move(s)]() mutable {
                struct forget {  // before the socket closes, so its fd is never shut down reused
                    raw_upstream* self;
                    int fd;
                    ~forget() {
                        std::lock_guard lock(self->mutex_);
                        std::erase(self->fds_, fd);
                    }
                } guard{this, s.native_handle()};
                beast::flat_buffer buf;
                for (;;) {
                    http::request<http::string_body> req;
                    beast::error_code rec;
                    http::read(s, buf, req, rec);
                    if (rec) return;
                    ++requests_;
                    net::write(s, net::buffer(reply_), rec);
                    if (rec) return;
                }
            });
        }
    }
    std::string reply_;
    net::io_context ioc_;
    tcp::acceptor acceptor_;
    std::thread thread_;
    std::vector<std::thread> conns_;  // joined by the destructor (after thread_, which adds to it)
    std::mutex mutex_;
    std::vector<int> fds_;            // the connections' sockets, shut down to end their threads
    std::atomic<bool> stop_{false};
    std::atomic<int> requests_{0};
};

const char* passthrough_yaml = R"(
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
worker_threads: 2
upstreams:
  api: {url: "http://127.0.0.1:{{PORT}}", request_timeout: 2s}
routes:
  - {name: all, match: {prefix: /}, upstream: api}
)";

}  // namespace

TEST(Robustness, InterimUpstreamAnswersAreNotTakenForTheAnswer) {
    raw_upstream up("HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nfinal");
    running_gateway gw(load_yaml(fill(passthrough_yaml, {{"PORT", std::to_string(up.port())}})));
    for (int i = 0; i < 5; ++i) {
        // Sequential calls reuse the pooled connection: a stale 200 would show up here.
        auto r = send_request(gw.port(), "POST", "/upload", std::string(2000, 'x'), {{"Expect", "100-continue"}});
        ASSERT_EQ(r.status, 200) << "call " << i << ": " << r.body;
        EXPECT_EQ(r.body, "final");
    }
    EXPECT_EQ(up.requests(), 5);
}

TEST(Robustness, DrainThatRunsOutOfTimeStillAnswersEveryCaller) {
    mock_upstream up;
    up.set_fault(fault::stall);
    running_gateway gw(load_yaml(fill(R"(
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
worker_threads: 2
limits: {drain_timeout: 200ms}
upstreams:
  api: {url: "http://127.0.0.1:{{PORT}}", request_timeout: 30s}
routes:
  - name: users
    match: {method: GET, path: "/users/{id}"}
    upstream: api
    mode: coalesce
    coalesce:
      key: {path: id}
      max_wait: 1ms
      request: {method: GET, path: /users, encoding: query_list, query_param: ids}
      response: {items: "", key: /id}
)",
                                      {{"PORT", std::to_string(up.port())}})));
    std::vector<response> out(4);
    std::vector<std::thread> callers;
    for (int i = 0; i < 4; ++i) callers.emplace_back([&, i] { out[i] = get(gw.port(), "/users/" + std::to_string(i + 1)); });
    // All four must be waiting before the stop: one still connecting would find no listener.
    const std::string waiting = R"(batchgate_waiting_callers{route="users"})";
    for (int tries = 0; tries < 500 && (up.calls().empty() || gw.metric(waiting) != 4); ++tries)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_FALSE(up.calls().empty()) << "the batch never reached the stalled upstream";
    ASSERT_EQ(gw.metric(waiting), 4);
    gw.stop();  // the upstream never answers: only the drain deadline can
    for (auto& t : callers) t.join();
    for (const auto& r : out) {
        EXPECT_EQ(r.status, 503) << r.body;
        EXPECT_EQ(r.json()["error"], "shutting_down") << r.body;
    }
}

TEST(Robustness, OversizedSubRequestHeaderIsRejectedInItsEntry) {
    mock_upstream up;
    running_gateway gw(load_yaml(fill(R"(
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
worker_threads: 2
upstreams:
  api: {url: "http://127.0.0.1:{{PORT}}"}
routes:
  - {name: batch, match: {method: POST, path: "/$batch"}, mode: batch_envelope}
  - {name: all, match: {prefix: /}, upstream: api}
)",
                                      {{"PORT", std::to_string(up.port())}})));
    nlohmann::json envelope{{"requests",
                             {{{"id", "big"}, {"method", "GET"}, {"url", "/echo/1"}, {"headers", {{"X-A", std::string(70000, 'a')}}}},
                              {{"id", "ok"}, {"method", "GET"}, {"url", "/echo/2"}}}}};
    auto r = send_request(gw.port(), "POST", "/$batch", envelope.dump(), {{"Content-Type", "application/json"}});
    ASSERT_EQ(r.status, 200) << r.body;
    auto responses = r.json()["responses"];
    ASSERT_EQ(responses.size(), 2u) << r.body;
    EXPECT_EQ(responses[0]["status"], 431);
    EXPECT_EQ(responses[1]["status"], 200);
    EXPECT_EQ(get(gw.port(), "/echo/still-alive").status, 200);
}
