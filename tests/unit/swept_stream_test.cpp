// swept_stream (net/swept_stream.hpp): basic_stream's timeout contract on the shard's deadline
// sweep, over a real loopback connection. Deadlines are fired by calling the sweep with an
// explicit time, so nothing here waits on the wall clock except the one test of the real tick.
#include "net/swept_stream.hpp"

#include <gtest/gtest.h>

#include <array>
#include <optional>
#include <string>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

using namespace batchgate::gateway;
using namespace std::chrono_literals;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using clock_type = std::chrono::steady_clock;

namespace {

struct swept_stream_test : ::testing::Test {
    net::io_context ioc{1};
    deadline_sweep& sweep = deadline_sweep::of(ioc.get_executor());
    std::optional<swept_stream> stream;  // the side under test
    std::optional<socket_t> peer;        // the other end, a plain socket

    void SetUp() override {
        tcp::acceptor acceptor(ioc, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
        socket_t client(ioc.get_executor());
        client.connect(acceptor.local_endpoint());
        socket_t server(ioc.get_executor());
        acceptor.accept(server);
        stream.emplace(std::move(server));
        peer.emplace(std::move(client));
    }

    // Runs what is ready now, without blocking on the sockets.
    void settle() {
        ioc.restart();
        ioc.poll();
    }
};

struct outcome {
    bool done = false;
    boost::system::error_code ec;
    std::size_t n = 0;
    auto handler() {
        return [this](boost::system::error_code e, std::size_t bytes) {
            done = true;
            ec = e;
            n = bytes;
        };
    }
};

}  // namespace

TEST_F(swept_stream_test, AReadThatCompletesInTimeIsUntouchedAndDisarms) {
    std::array<char, 16> buf{};
    outcome r;
    stream->expires_after(1h);
    stream->async_read_some(net::buffer(buf), r.handler());
    EXPECT_EQ(sweep.armed(), 1u);
    net::write(*peer, net::buffer(std::string("hello")));
    for (int i = 0; i < 100 && !r.done; ++i) ioc.run_one();
    ASSERT_TRUE(r.done);
    EXPECT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(std::string(buf.data(), r.n), "hello");
    EXPECT_EQ(sweep.armed(), 0u) << "a finished operation leaves no deadline behind";
    EXPECT_TRUE(stream->socket().is_open());
}

TEST_F(swept_stream_test, APassedDeadlineClosesTheSocketAndReportsTimeout) {
    std::array<char, 16> buf{};
    outcome r;
    const auto t0 = clock_type::now();
    stream->expires_after(30s);
    stream->async_read_some(net::buffer(buf), r.handler());
    sweep.sweep(t0 + 29s);  // not yet
    settle();
    EXPECT_FALSE(r.done);
    sweep.sweep(t0 + 31s);
    settle();
    ASSERT_TRUE(r.done);
    EXPECT_EQ(r.ec, boost::beast::error::timeout) << r.ec.message();
    EXPECT_FALSE(stream->socket().is_open());
    EXPECT_EQ(sweep.armed(), 0u);
}

TEST_F(swept_stream_test, ExpiresNeverMeansNoDeadline) {
    std::array<char, 16> buf{};
    outcome r;
    stream->expires_after(1s);
    stream->expires_never();
    stream->async_read_some(net::buffer(buf), r.handler());
    EXPECT_EQ(sweep.armed(), 0u);
    sweep.sweep(clock_type::now() + 24h);
    settle();
    EXPECT_FALSE(r.done);
    stream->close();
    settle();
    ASSERT_TRUE(r.done);
    EXPECT_EQ(r.ec, net::error::operation_aborted) << "a close is not reported as a timeout";
}

// basic_stream's rule: setting a deadline while a read is pending applies to the write side
// only; the pending read keeps the deadline it started with.
TEST_F(swept_stream_test, APendingOperationKeepsItsDeadline) {
    std::array<char, 16> buf{};
    outcome r, w;
    const auto t0 = clock_type::now();
    stream->expires_after(10s);
    stream->async_read_some(net::buffer(buf), r.handler());
    stream->expires_after(1h);  // for the write
    const std::string data = "x";
    stream->async_write_some(net::buffer(data), w.handler());
    for (int i = 0; i < 100 && !w.done; ++i) ioc.run_one();
    ASSERT_TRUE(w.done);
    EXPECT_FALSE(w.ec);
    sweep.sweep(t0 + 11s);
    settle();
    ASSERT_TRUE(r.done) << "the read's 10 s deadline was replaced by the write's";
    EXPECT_EQ(r.ec, boost::beast::error::timeout);
}

TEST_F(swept_stream_test, AnOperationStartedAfterItsDeadlineFailsAtOnce) {
    std::array<char, 16> buf{};
    outcome r;
    stream->expires_at(clock_type::now() - 1s);
    stream->async_read_some(net::buffer(buf), r.handler());
    EXPECT_FALSE(r.done) << "the handler is posted, never called inline";
    settle();
    ASSERT_TRUE(r.done);
    EXPECT_EQ(r.ec, boost::beast::error::timeout);
    EXPECT_FALSE(stream->socket().is_open());
}

TEST_F(swept_stream_test, AWriteToAReaderThatNeverReadsTimesOut) {
    // The peer never reads: the write fills both socket buffers and then waits.
    const std::string chunk(64 << 20, 'z');  // far more than loopback's socket buffers
    outcome w;
    const auto t0 = clock_type::now();
    stream->expires_after(5s);
    net::async_write(*stream, net::buffer(chunk), [&](boost::system::error_code ec, std::size_t n) {
        w.done = true;
        w.ec = ec;
        w.n = n;
    });
    for (int i = 0; i < 50; ++i) settle();
    sweep.sweep(t0 + 6s);
    for (int i = 0; i < 10 && !w.done; ++i) settle();
    ASSERT_TRUE(w.done);
    EXPECT_EQ(w.ec, boost::beast::error::timeout) << w.ec.message();
    EXPECT_LT(w.n, chunk.size());
}

TEST_F(swept_stream_test, ConnectToANonListeningPortFailsAndDisarms) {
    tcp::acceptor probe(ioc, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
    const auto dead = probe.local_endpoint();
    probe.close();  // nothing listens there now: refused at once
    swept_stream s(ioc.get_executor());
    bool done = false;
    boost::system::error_code got;
    s.expires_after(1h);
    s.async_connect(std::array<tcp::endpoint, 1>{dead}, [&](boost::system::error_code ec, const tcp::endpoint&) {
        done = true;
        got = ec;
    });
    for (int i = 0; i < 100 && !done; ++i) ioc.run_one();
    ASSERT_TRUE(done);
    EXPECT_TRUE(got) << "connected to a closed port";
    EXPECT_NE(got, boost::beast::error::timeout);
    EXPECT_EQ(sweep.armed(), 0u);
}

TEST_F(swept_stream_test, TheRealTickFiresADeadline) {
    std::array<char, 16> buf{};
    outcome r;
    stream->expires_after(20ms);
    stream->async_read_some(net::buffer(buf), r.handler());
    // Bounded: the 10 ms tick fires it; 5 s only guards against a hang.
    const auto give_up = clock_type::now() + 5s;
    while (!r.done && clock_type::now() < give_up) ioc.run_one_for(100ms);
    ASSERT_TRUE(r.done);
    EXPECT_EQ(r.ec, boost::beast::error::timeout);
}

// Remaining budgets (what is left of a request's time) make a new length on nearly every arm;
// the lists stay bounded and every list stays in deadline order.
TEST(DeadlineSweep, RunTimeLengthsShareABoundedSetOfLists) {
    net::io_context ioc{1};
    auto& sweep = deadline_sweep::of(ioc.get_executor());
    struct entry : deadline_entry {
        int* next;
        int mine = -1;
        void deadline_passed() override { mine = (*next)++; }
        using deadline_entry::armed;
    };
    int next = 0;
    std::vector<std::unique_ptr<entry>> entries;
    const auto t0 = clock_type::now();
    for (int i = 0; i < 200; ++i) {
        auto& e = *entries.emplace_back(std::make_unique<entry>());
        e.next = &next;
        // Lengths 200 ms down to 1 ms, each one new: the deadlines fall in reverse order of arming.
        sweep.arm(e, t0, std::chrono::milliseconds(200 - i));
    }
    EXPECT_LE(sweep.lists(), deadline_sweep::max_lists);
    for (int ms = 0; ms <= 200; ++ms) sweep.sweep(t0 + std::chrono::milliseconds(ms));
    for (int i = 0; i < 200; ++i) EXPECT_EQ(entries[i]->mine, 199 - i) << "entry " << i << " fired out of order";
}
