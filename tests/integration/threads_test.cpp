// Worker threads as shards (gateway/shard.hpp): every thread accepts connections, and a coalesce
// partition still gathers its callers from all of them into one batch, while callers of
// different partitions (another Authorization) never share a call, whichever threads they are on.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "tests/integration/examples.hpp"
#include "tests/integration/harness.hpp"

using namespace batchgate::testing;
using batchgate::mock::mock_upstream;

namespace {

const char* yaml = R"(
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
worker_threads: 4
upstreams:
  api:
    url: http://127.0.0.1:{{PORT}}
routes:
  - name: users
    match: {method: GET, path: "/users/{id}"}
    upstream: api
    mode: coalesce
    coalesce:
      key: {path: id}
      flush: window
      max_wait: 400ms
      max_batch_items: 100
      request: {method: GET, path: /users, encoding: query_list, query_param: ids}
      response: {items: "", key: /id}
  - name: rest
    match: {prefix: /}
    upstream: api
)";

// connections_accepted_total of each worker thread.
std::vector<double> accepted_per_thread(running_gateway& gw) {
    std::vector<double> out;
    for (std::size_t t = 0; t < gw.server().worker_threads(); ++t)
        out.push_back(std::max(0.0, gw.metric("batchgate_connections_accepted_total{thread=\"" + std::to_string(t) + "\"}")));
    return out;
}

std::size_t threads_used(const std::vector<double>& accepted) {
    return static_cast<std::size_t>(std::count_if(accepted.begin(), accepted.end(), [](double n) { return n > 0; }));
}

}  // namespace

TEST(Threads, EveryWorkerThreadAcceptsConnections) {
    mock_upstream up;
    running_gateway gw(load_yaml(fill(yaml, {{"PORT", std::to_string(up.port())}})), exact_threads);
    ASSERT_EQ(gw.server().worker_threads(), 4u);
    auto results = concurrently(64, [&](int) { return get(gw.port(), "/health"); });
    for (auto& r : results) EXPECT_NE(r.status, 0) << "no answer";
    const auto accepted = accepted_per_thread(gw);
    double total = 0;
    for (double n : accepted) total += n;
    EXPECT_EQ(total, 64);
    // SO_REUSEPORT spreads connections by their address hash: 64 on one of 4 threads is 4^-63.
    EXPECT_GE(threads_used(accepted), 2u);
}

TEST(Threads, WorkerThreadsAreNamedForTools) {
    mock_upstream up;
    running_gateway gw(load_yaml(fill(yaml, {{"PORT", std::to_string(up.port())}})), exact_threads);
    // /proc/self/task/TID/comm: what top -H, ps -L and bench/run.sh see. A thread names itself
    // when it starts, so give them a moment (bounded).
    const std::set<std::string> expected{"bg-worker-0", "bg-worker-1", "bg-worker-2", "bg-worker-3"};
    std::multiset<std::string> workers;
    for (int attempt = 0; attempt < 100 && std::set<std::string>(workers.begin(), workers.end()) != expected; ++attempt) {
        if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
        workers.clear();
        for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
            std::ifstream comm(task.path() / "comm");
            std::string name;
            if (std::getline(comm, name) && name.rfind("bg-worker-", 0) == 0) workers.insert(name);
        }
    }
    EXPECT_EQ(workers, std::multiset<std::string>(expected.begin(), expected.end()));
}

TEST(Threads, ABatchGathersItsCallersFromEveryThread) {
    mock_upstream up({.threads = 2});
    running_gateway gw(load_yaml(fill(yaml, {{"PORT", std::to_string(up.port())}})), exact_threads);
    auto results = concurrently(60, [&](int i) { return get(gw.port(), "/users/" + std::to_string(i + 1)); });
    std::set<std::string> batches;
    for (int i = 0; i < 60; ++i) {
        ASSERT_EQ(results[i].status, 200) << results[i].body;
        EXPECT_EQ(results[i].json()["id"], std::to_string(i + 1)) << "caller " << i << " got another's answer";
        batches.insert(results[i].header("x-batchgate-batch-id"));
    }
    EXPECT_GE(threads_used(accepted_per_thread(gw)), 2u) << "the callers all came in on one thread";
    // One window (400 ms) holds them all: the callers of every thread went into one batch call.
    EXPECT_EQ(batches.size(), 1u);
    EXPECT_EQ(calls_to(up, "GET", "/users").size(), 1u);
    EXPECT_EQ(up.count("GET", "/users/1"), 0u) << "a single call reached the upstream";
}

TEST(Threads, PartitionsNeverMixAcrossThreads) {
    mock_upstream up({.threads = 2});
    running_gateway gw(load_yaml(fill(yaml, {{"PORT", std::to_string(up.port())}})), exact_threads);
    const std::string tokens[] = {"Bearer alice", "Bearer bob", "Bearer carol"};
    auto results = concurrently(60, [&](int i) {
        return get(gw.port(), "/users/" + std::to_string(i + 1), {{"Authorization", tokens[i % 3]}});
    });
    std::map<std::string, std::set<std::string>> batches_of;  // token -> batch ids its callers got
    for (int i = 0; i < 60; ++i) {
        ASSERT_EQ(results[i].status, 200) << results[i].body;
        EXPECT_EQ(results[i].json()["id"], std::to_string(i + 1));
        batches_of[tokens[i % 3]].insert(results[i].header("x-batchgate-batch-id"));
    }
    std::set<std::string> all;
    for (auto& [token, ids] : batches_of)
        for (auto& id : ids) EXPECT_TRUE(all.insert(id).second) << "batch " << id << " served two partitions";
    // Each call carried one caller's credentials, and only that caller's partition's ids.
    auto calls = calls_to(up, "GET", "/users");
    EXPECT_EQ(calls.size(), 3u);
    for (auto& c : calls) {
        const std::string token = c.headers.count("authorization") ? c.headers.at("authorization") : "";
        const int k = token == tokens[0] ? 0 : token == tokens[1] ? 1 : token == tokens[2] ? 2 : -1;
        ASSERT_GE(k, 0) << "batch call without a caller's Authorization: " << c.target;
        for (auto& id : query_values(c.target, "ids", true)) EXPECT_EQ((std::stoi(id) - 1) % 3, k) << c.target;
    }
}

// Shutdown with idle keep-alive connections on every thread: each session still holds the
// runtime (its batchers own a timer on every shard, its pools connections on every shard). The
// io_contexts used to be destroyed one after another, so a later shard's session could be the
// last holder and free a batcher's timer on a shard already destroyed (found by review; ASan
// sees the use after free). Every shard is now shut down before any is destroyed.
TEST(Threads, ShutdownWithIdleConnectionsOnEveryThreadFreesInOrder) {
    mock_upstream up({.threads = 2});
    net::io_context client;
    std::vector<tcp::socket> idle;
    {
        running_gateway gw(load_yaml(fill(yaml, {{"PORT", std::to_string(up.port())}})), exact_threads);
        for (int i = 0; i < 32; ++i) {
            auto& s = idle.emplace_back(client);
            s.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), gw.port()));
            http::request<http::empty_body> req{http::verb::get, "/users/" + std::to_string(i + 1), 11};
            req.set(http::field::host, "gateway.test");
            http::write(s, req);
        }
        for (auto& s : idle) {  // every answer read; the connections stay open and idle
            beast::flat_buffer buffer;
            http::response<http::string_body> res;
            http::read(s, buffer, res);
            ASSERT_EQ(res.result_int(), 200) << res.body();
        }
        EXPECT_GE(threads_used(accepted_per_thread(gw)), 2u) << "the connections all came in on one thread";
        gw.stop();
    }  // the server and its shards are destroyed here, with the connections still open
    for (auto& s : idle) {  // the gateway closed them: a read ends, it does not hang
        timeval tv{2, 0};
        setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char byte;
        beast::error_code ec;
        EXPECT_EQ(s.read_some(net::buffer(&byte, 1), ec), 0u);
        EXPECT_TRUE(ec == net::error::eof || ec == net::error::connection_reset) << ec.message();
    }
}
