// Integration test harness: a real gateway in-process on 127.0.0.1:0 with a config written
// to a real YAML file, in front of a real mock upstream, driven by a plain blocking HTTP
// client over real sockets.
#pragma once

#include <gtest/gtest.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <latch>
#include <thread>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "config/loader.hpp"
#include "gateway/server.hpp"
#include "tests/mock_upstream/mock_upstream.hpp"

namespace batchgate::testing {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

struct response {
    int status = 0;
    std::string body;
    std::map<std::string, std::string> headers;  // lower-case names
    nlohmann::json json() const { return nlohmann::json::parse(body, nullptr, false); }
    std::string header(const std::string& name) const {
        auto it = headers.find(name);
        return it == headers.end() ? std::string() : it->second;
    }
};

// A client socket connected to 127.0.0.1:port. SO_RCVTIMEO (timeout_seconds) bounds only the
// first wait of a synchronous read on it: when recv times out, Asio waits in poll() without end
// (socket_ops::sync_recv). Reads that must give up go through read_within.
inline tcp::socket connect_client(net::io_context& ioc, unsigned short port, long timeout_seconds = 5) {
    tcp::socket socket(ioc);
    socket.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
    timeval tv{timeout_seconds, 0};
    setsockopt(socket.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return socket;
}

// Runs one asynchronous read, started by `start(handler)` on socket (of ioc), until it completes
// or `limit` passes; then the read is cancelled and the result is net::error::timed_out. A test
// that waits for an answer that never comes fails after `limit` instead of hanging until ctest's
// timeout. The handler's second argument is the bytes read.
struct read_result {
    beast::error_code ec;
    std::size_t bytes = 0;
};
template <class Start>
read_result read_within(net::io_context& ioc, tcp::socket& socket, std::chrono::milliseconds limit, Start&& start) {
    read_result out;
    bool timed_out = false;
    net::steady_timer timer(ioc, limit);
    start([&](beast::error_code ec, std::size_t n) {
        out = {ec, n};
        timer.cancel();
    });
    timer.async_wait([&](beast::error_code ec) {
        if (ec) return;
        timed_out = true;
        beast::error_code ignored;
        socket.cancel(ignored);
    });
    ioc.restart();
    ioc.run();
    if (timed_out) out.ec = net::error::timed_out;
    return out;
}

// One request on a fresh connection. status 0 means the connection failed, or no answer came
// within 100 s.
inline response send_request(unsigned short port, const std::string& method, const std::string& target,
                             const std::string& body = "", const std::map<std::string, std::string>& headers = {}) {
    response out;
    try {
        net::io_context ioc;
        // Bounded, so that an answer that never comes fails the test ("Resource temporarily
        // unavailable") rather than hanging it until ctest's timeout.
        auto socket = connect_client(ioc, port, 100);
        http::request<http::string_body> req{http::string_to_verb(method), target, 11};
        if (req.method() == http::verb::unknown) req.method_string(method);
        req.set(http::field::host, "gateway.test");
        for (const auto& [k, v] : headers) req.set(k, v);
        req.body() = body;
        if (!body.empty() || method == "POST" || method == "PUT" || method == "PATCH") req.prepare_payload();
        http::write(socket, req);
        beast::flat_buffer buffer;
        std::optional<http::response_parser<http::string_body>> parser;
        do {  // an interim answer (100 Continue) is followed by the real one, as for any client
            parser.emplace();
            parser->body_limit(256 * 1024 * 1024);
            if (method == "HEAD") parser->skip(true);
            auto r = read_within(ioc, socket, std::chrono::seconds(100),
                                 [&](auto&& handler) { http::async_read(socket, buffer, *parser, handler); });
            if (r.ec) throw beast::system_error(r.ec);
        } while (parser->get().result_int() >= 100 && parser->get().result_int() < 200);
        auto res = parser->release();
        out.status = res.result_int();
        out.body = res.body();
        for (const auto& f : res) {
            std::string name(f.name_string());
            for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            out.headers[name] = std::string(f.value());
        }
        beast::error_code ec;
        socket.shutdown(tcp::socket::shutdown_both, ec);
    } catch (const std::exception& e) {
        out.status = 0;
        out.body = e.what();
    }
    return out;
}

inline response get(unsigned short port, const std::string& target, const std::map<std::string, std::string>& headers = {}) {
    return send_request(port, "GET", target, "", headers);
}

// Sends raw bytes and returns whatever comes back until the server closes (or 2 s pass).
inline std::string send_raw(unsigned short port, const std::string& bytes) {
    net::io_context ioc;
    auto socket = connect_client(ioc, port, 2);
    net::write(socket, net::buffer(bytes));
    std::string got;
    char buf[4096];
    for (;;) {  // 2 s of silence end it too
        auto r = read_within(ioc, socket, std::chrono::seconds(2),
                             [&](auto&& handler) { socket.async_read_some(net::buffer(buf), handler); });
        if (r.ec || r.bytes == 0) break;
        got.append(buf, r.bytes);
    }
    return got;
}

// Writes YAML to a temp file and loads it through the real loader (so tests also exercise it).
inline std::shared_ptr<const config::gateway_config> load_yaml(const std::string& yaml) {
    static int counter = 0;
    auto dir = std::filesystem::temp_directory_path() / ("batchgate-test-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    auto path = dir / ("config-" + std::to_string(++counter) + ".yaml");
    std::ofstream(path) << yaml;
    return std::make_shared<const config::gateway_config>(config::load_file(path.string()));
}

// Replaces every "{{NAME}}" in text.
inline std::string fill(std::string text, const std::map<std::string, std::string>& values) {
    for (const auto& [k, v] : values) {
        const std::string needle = "{{" + k + "}}";
        for (auto pos = text.find(needle); pos != std::string::npos; pos = text.find(needle, pos + v.size()))
            text.replace(pos, needle.size(), v);
    }
    return text;
}

// A coalesce route over users (GET /users?ids=...) whose callers without X-Id go upstream alone
// and whole (buffered passthrough, on the pool), with everything else streamed to the same
// upstream. Fill PORT, METHOD (the route's) and KEEP_ALIVE (the upstream's keep_alive).
inline constexpr const char* keyed_users_yaml = R"(
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
worker_threads: 1
logging: {level: error, access_log: false}
upstreams:
  api: {url: "http://127.0.0.1:{{PORT}}", request_timeout: 2s, keep_alive: {{KEEP_ALIVE}}}
routes:
  - name: users
    match: {method: {{METHOD}}, path: "/users/{id}"}
    upstream: api
    mode: coalesce
    coalesce:
      key: {header: X-Id}
      on_missing_key: passthrough
      max_wait: 1ms
      request: {method: GET, path: /users, encoding: query_list, query_param: ids}
      response: {items: "", key: /id}
  - name: everything
    match: {prefix: /}
    upstream: api
)";

// A gateway running in-process.
// BATCHGATE_TEST_WORKER_THREADS=N runs every in-process gateway with N worker threads, whatever
// its config says (scripts/test.sh runs the integration tests with 1, 2 and 4).
inline std::shared_ptr<const config::gateway_config> with_test_threads(std::shared_ptr<const config::gateway_config> cfg) {
    const char* n = std::getenv("BATCHGATE_TEST_WORKER_THREADS");
    if (!n || !*n) return cfg;
    auto copy = std::make_shared<config::gateway_config>(*cfg);
    copy->worker_threads = static_cast<unsigned>(std::stoul(n));
    return copy;
}

// Tag: the config's worker_threads, whatever BATCHGATE_TEST_WORKER_THREADS says (tests of threads).
struct exact_threads_t {};
inline constexpr exact_threads_t exact_threads;

class running_gateway {
public:
    explicit running_gateway(std::shared_ptr<const config::gateway_config> cfg) : server_(with_test_threads(std::move(cfg))) {
        server_.start();
    }
    running_gateway(std::shared_ptr<const config::gateway_config> cfg, exact_threads_t) : server_(std::move(cfg)) {
        server_.start();
    }
    ~running_gateway() { stop(); }
    void stop() {
        if (stopped_) return;
        stopped_ = true;
        server_.shutdown();
        server_.wait();
    }
    // Starts the drain (what SIGTERM does) and returns once /readyz says so: from here the drain
    // deadline runs, whatever the threads' timing.
    void begin_drain() {
        server_.shutdown();
        for (int i = 0; i < 400 && get(admin_port(), "/readyz").body.find("draining") == std::string::npos; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    unsigned short port() const { return server_.port(); }
    unsigned short admin_port() const { return server_.admin_port(); }
    gateway::server& server() { return server_; }

    std::string metrics() { return get(admin_port(), "/metrics").body; }

    // Value of one sample in the /metrics text ("name{labels}"), or -1 when absent.
    double metric(const std::string& series) {
        const std::string text = metrics();
        std::istringstream in(text);
        std::string line;
        while (std::getline(in, line)) {
            if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
        }
        return -1;
    }

    // For a sample a client may read before it is updated: a streamed answer's counters (after
    // its last byte went out), or a batcher's gauges (set after it posted the batch's answers).
    // Polls every 5 ms until the sample reads `expected` or 2 s pass;
    // returns the last value read.
    double metric_reaching(const std::string& series, double expected) {
        double v = metric(series);
        for (int i = 0; i < 400 && v != expected; ++i) {
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
            v = metric(series);
        }
        return v;
    }

private:
    gateway::server server_;
    bool stopped_ = false;
};

// For an upstream written by hand in a thread: accepts one connection on acceptor into s and
// reads until the end of the first request's head. What it read (the head and any body bytes
// after it), or nothing on an error.
inline std::string accept_and_read_head(tcp::acceptor& acceptor, tcp::socket& s) {
    beast::error_code ec;
    acceptor.accept(s, ec);
    std::string in;
    char buf[65536];
    while (!ec && in.find("\r\n\r\n") == std::string::npos) in.append(buf, s.read_some(net::buffer(buf), ec));
    return ec ? std::string() : in;
}

// Runs fn(i) on n threads released at the same moment; returns the results in order.
template <class Fn>
std::vector<response> concurrently(int n, Fn fn) {
    std::vector<response> results(n);
    std::latch go(n);
    std::vector<std::thread> threads;
    threads.reserve(n);
    for (int i = 0; i < n; ++i)
        threads.emplace_back([&, i] {
            go.arrive_and_wait();
            results[i] = fn(i);
        });
    for (auto& t : threads) t.join();
    return results;
}

// Splits "1,2,7" / repeated params out of a recorded batch call's target.
inline std::vector<std::string> query_values(const std::string& target, const std::string& param, bool list) {
    std::vector<std::string> out;
    auto q = target.find('?');
    if (q == std::string::npos) return out;
    std::string query = target.substr(q + 1);
    std::size_t start = 0;
    while (start <= query.size()) {
        auto amp = query.find('&', start);
        std::string pair = query.substr(start, amp == std::string::npos ? std::string::npos : amp - start);
        auto eq = pair.find('=');
        if (eq != std::string::npos && pair.substr(0, eq) == param) {
            std::string value = pair.substr(eq + 1);
            if (list) {
                std::size_t s = 0;
                while (s <= value.size()) {
                    auto c = value.find(',', s);
                    out.push_back(value.substr(s, c == std::string::npos ? std::string::npos : c - s));
                    if (c == std::string::npos) break;
                    s = c + 1;
                }
            } else {
                out.push_back(value);
            }
        }
        if (amp == std::string::npos) break;
        start = amp + 1;
    }
    return out;
}

}  // namespace batchgate::testing
