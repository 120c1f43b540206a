// swept_stream (net/swept_stream.hpp): basic_stream's timeout contract on the shard's deadline
// sweep, over a real loopback connection. Deadlines are fired by calling the sweep with an
// explicit time, so nothing here waits on the wall clock except the one test of the real tick.
#include "net/swept_stream.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <gtest/gtest.h>

#include <array>
#include <optional>
#include <string>

#include <boost/asio/executor_work_guard.hpp>
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

    // Runs handlers until r is done, or for about rounds * 20 ms.
    void run_until(const struct outcome& r, int rounds = 100);

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

void swept_stream_test::run_until(const outcome& r, int rounds) {
    for (int i = 0; i < rounds && !r.done; ++i) {
        ioc.restart();
        ioc.run_one_for(20ms);
    }
}

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

// Reads and the receive queue (net/swept_stream.hpp): a read that drains the socket tells asio's
// reactor to wait for the next edge before it tries another receive.

namespace {
struct drained_stream_test : swept_stream_test {
    std::array<char, 64> buf{};

    // A read queued before `bytes` come (so the reactor performs it on their edge, which is then
    // spent), with the peer's FIN right behind them if `fin`. It drains the socket.
    void drain(const std::string& bytes, bool fin = false) {
        outcome first;
        stream->async_read_some(net::buffer(buf), first.handler());
        settle();
        ASSERT_FALSE(first.done) << "nothing sent yet";
        // With the FIN: corked, so that the shutdown sends both in one segment (one edge).
        const int cork = fin ? 1 : 0;
        ::setsockopt(peer->native_handle(), IPPROTO_TCP, TCP_CORK, &cork, sizeof cork);
        net::write(*peer, net::buffer(bytes));
        if (fin) peer->shutdown(tcp::socket::shutdown_send);
        run_until(first);
        ASSERT_TRUE(first.done);
        ASSERT_FALSE(first.ec) << first.ec.message();
        ASSERT_EQ(std::string(buf.data(), first.n), bytes);
        ASSERT_TRUE(stream->drained());
    }
    // Starts a read into buf, the first of a new message if `may_wait`.
    void read(outcome& r, bool may_wait = false) {
        if (may_wait) stream->next_read_may_wait();
        stream->async_read_some(net::buffer(buf), r.handler());
    }
    std::string got(const outcome& r) const { return std::string(buf.data(), r.n); }
};
}  // namespace

TEST_F(drained_stream_test, AReadAfterADrainingOneStillSeesTheFinThatCameWithTheData) {
    ASSERT_NO_FATAL_FAILURE(drain("abc", true));
    // A close-delimited body, or an upstream that closes mid-answer: the FIN raises no new edge,
    // so this read must try the socket itself.
    outcome second;
    read(second);
    run_until(second, 50);
    ASSERT_TRUE(second.done) << "the FIN behind drained data was never seen";
    EXPECT_EQ(second.ec, net::error::eof);
    EXPECT_TRUE(stream->drained());
}

TEST_F(drained_stream_test, TheFirstReadOfANewMessageWaitsForTheSocketsNextEdgeThenProbes) {
    ASSERT_NO_FATAL_FAILURE(drain("abc", true));
    // Declared the first read of a new message, it is not tried (no receive that finds nothing),
    // so the FIN behind the last message shows as nothing at first.
    stream->expires_after(1h);
    outcome idle;
    read(idle, true);
    run_until(idle, 5);
    EXPECT_FALSE(idle.done) << "the reactor tried a drained socket";
    // After fin_probe_after it peeks once, finds the FIN, and ends as EOF would have.
    sweep.sweep(clock_type::now() + swept_stream::fin_probe_after);
    run_until(idle, 50);
    ASSERT_TRUE(idle.done);
    EXPECT_EQ(idle.ec, net::error::eof) << idle.ec.message();
    EXPECT_EQ(sweep.armed(), 0u);
}

TEST_F(drained_stream_test, TheFinProbeOfAQuietConnectionGivesBackItsDeadline) {
    ASSERT_NO_FATAL_FAILURE(drain("one"));
    const auto t0 = clock_type::now();
    stream->expires_after(30s);
    outcome idle;
    read(idle, true);
    sweep.sweep(t0 + 2s);  // the probe: nothing there, the read goes on
    run_until(idle, 3);
    EXPECT_FALSE(idle.done);
    EXPECT_EQ(sweep.armed(), 1u) << "the read's own deadline is armed again";
    sweep.sweep(t0 + 29s);
    run_until(idle, 3);
    EXPECT_FALSE(idle.done);
    sweep.sweep(t0 + 31s);
    run_until(idle);
    ASSERT_TRUE(idle.done);
    EXPECT_EQ(idle.ec, boost::beast::error::timeout);
}

TEST_F(drained_stream_test, AWaitingFirstReadGetsWhatArrivesLaterProbedOrNot) {
    ASSERT_NO_FATAL_FAILURE(drain("one"));
    outcome next;
    read(next, true);  // no deadline: the probe alone is armed
    settle();
    EXPECT_FALSE(next.done);
    EXPECT_EQ(sweep.armed(), 1u);
    sweep.sweep(clock_type::now() + 2s);
    EXPECT_EQ(sweep.armed(), 0u);
    net::write(*peer, net::buffer(std::string("two")));
    run_until(next);
    ASSERT_TRUE(next.done);
    EXPECT_FALSE(next.ec) << next.ec.message();
    EXPECT_EQ(got(next), "two");
}

TEST_F(swept_stream_test, AFullReadLeavesTheSocketUndrainedAndTheRestIsRead) {
    std::array<char, 4> small{};
    net::write(*peer, net::buffer(std::string("abcdefgh")));
    outcome first;
    stream->async_read_some(net::buffer(small), first.handler());
    run_until(first);
    ASSERT_TRUE(first.done);
    EXPECT_EQ(std::string(small.data(), first.n), "abcd");
    EXPECT_FALSE(stream->drained()) << "a read that filled its buffer says nothing of the queue";
    // Even a first read of a message: the rest is there, and the reactor tries it.
    stream->next_read_may_wait();
    outcome second;
    stream->async_read_some(net::buffer(small), second.handler());
    run_until(second);
    ASSERT_TRUE(second.done);
    EXPECT_EQ(std::string(small.data(), second.n), "efgh");
}

TEST_F(drained_stream_test, AReadTriedAtOnceAfterADrainingOneKeepsItsDeadlineContract) {
    ASSERT_NO_FATAL_FAILURE(drain("x"));
    // Bytes already there: the read tried at once completes, later, through the executor, and
    // disarms its deadline.
    net::write(*peer, net::buffer(std::string("yz")));
    stream->expires_after(1h);
    outcome second;
    read(second);
    EXPECT_FALSE(second.done) << "never completed inside the initiating call";
    run_until(second);
    ASSERT_TRUE(second.done);
    EXPECT_EQ(got(second), "yz");
    EXPECT_EQ(sweep.armed(), 0u);
    // Nothing there: it waits, and its deadline closes the socket.
    outcome third;
    stream->expires_after(1s);
    read(third);
    settle();
    EXPECT_FALSE(third.done);
    sweep.sweep(clock_type::now() + 2s);
    run_until(third, 50);
    ASSERT_TRUE(third.done);
    EXPECT_EQ(third.ec, boost::beast::error::timeout);
}

// asio's ssl::stream completes an operation from what OpenSSL already holds with a read of
// nothing; asio completes that without a receive, so it says nothing of the socket.
TEST_F(drained_stream_test, AReadOfNothingLeavesTheSocketDrained) {
    ASSERT_NO_FATAL_FAILURE(drain("abc", true));
    outcome nothing;
    stream->async_read_some(net::buffer(buf.data(), 0), nothing.handler());
    run_until(nothing);
    ASSERT_TRUE(nothing.done);
    EXPECT_EQ(nothing.n, 0u);
    EXPECT_TRUE(stream->drained());
    outcome next;  // so it still tries the socket, and sees the FIN
    read(next);
    run_until(next, 50);
    ASSERT_TRUE(next.done) << "the FIN behind drained data was never seen";
    EXPECT_EQ(next.ec, net::error::eof);
}

// The probe runs after a first read of a message completed (its handler not run yet): the read
// keeps what it took, and the next read sees the EOF.
TEST_F(drained_stream_test, AProbeAfterTheReadCompletedKeepsWhatItRead) {
    ASSERT_NO_FATAL_FAILURE(drain("one"));
    const int cork = 1;
    ::setsockopt(peer->native_handle(), IPPROTO_TCP, TCP_CORK, &cork, sizeof cork);
    net::write(*peer, net::buffer(std::string("two")));
    peer->shutdown(tcp::socket::shutdown_send);
    {  // the edge is seen with no read queued: the reactor tries the next one at once
        auto busy = net::make_work_guard(ioc);  // poll() runs the reactor only when work is owed
        settle();
    }
    outcome next;
    read(next, true);
    EXPECT_FALSE(next.done);
    sweep.sweep(clock_type::now() + 2s);  // the probe, before the read's handler runs
    run_until(next);
    ASSERT_TRUE(next.done);
    EXPECT_FALSE(next.ec) << next.ec.message();
    EXPECT_EQ(got(next), "two");
    outcome last;
    read(last);
    run_until(last, 50);
    ASSERT_TRUE(last.done);
    EXPECT_EQ(last.ec, net::error::eof) << last.ec.message();
}

// A write that ends while a read is pending (a body streaming up while the answer's head is
// awaited) leaves the read pending: a deadline set after it is the next operations', never the
// read's. (It used to free the read as a connect's end does, so the FIN probe, giving the read
// its deadline back, gave it the writes' idle timeout: an upload cut 2 s after its first second.)
TEST_F(drained_stream_test, AWriteEndingBesideAPendingReadLeavesTheReadsDeadlineAlone) {
    ASSERT_NO_FATAL_FAILURE(drain("one"));
    stream->expires_never();
    outcome head;
    read(head, true);  // waits for the answer, with no deadline of its own; the probe is armed
    outcome written;
    const std::string piece = "a piece of the body";
    stream->expires_after(2s);
    stream->async_write_some(net::buffer(piece), written.handler());
    run_until(written);
    ASSERT_TRUE(written.done);
    stream->expires_after(2s);  // the next piece's idle timeout
    const auto t0 = clock_type::now();
    sweep.sweep(t0 + 1500ms);  // the probe: nothing from the peer
    sweep.sweep(t0 + 10s);
    run_until(head, 3);
    EXPECT_FALSE(head.done) << head.ec.message() << ": the read took the writes' deadline";
    net::write(*peer, net::buffer(std::string("answer")));
    run_until(head);
    ASSERT_TRUE(head.done);
    EXPECT_FALSE(head.ec) << head.ec.message();
    EXPECT_EQ(got(head), "answer");
}

// send_now: one non-blocking send, now. All of a small write goes; a socket that is full takes
// part or nothing, with no error and no deadline armed; nothing goes beside a pending write
// (bytes never interleave); a peer that reset the connection is an error.
TEST_F(swept_stream_test, SendNowSendsWhatTheSocketTakesAndNeverBesideAPendingWrite) {
    boost::system::error_code ec;
    const std::string hello = "hello, ";
    const std::string world = "world";
    EXPECT_EQ(stream->send_now(std::array{net::buffer(hello), net::buffer(world)}, ec), hello.size() + world.size());
    EXPECT_FALSE(ec);
    std::string got(12, '\0');
    net::read(*peer, net::buffer(got));
    EXPECT_EQ(got, "hello, world");
    EXPECT_EQ(sweep.armed(), 0u);

    // The peer never reads: sends fill the socket buffers, then take nothing.
    stream->expires_after(5s);
    const std::string chunk(1 << 20, 'z');
    std::size_t total = 0;
    for (int i = 0; i < 256; ++i) {
        const auto n = stream->send_now(net::buffer(chunk), ec);
        ASSERT_FALSE(ec) << ec.message();
        total += n;
        if (n == 0) break;
    }
    EXPECT_GT(total, 0u);
    EXPECT_EQ(stream->send_now(net::buffer(chunk), ec), 0u) << "a full socket took more";
    EXPECT_FALSE(ec);
    EXPECT_EQ(sweep.armed(), 0u) << "a send that did not wait armed its deadline";

    // A write pending on the full socket: send_now sends nothing beside it.
    outcome w;
    net::async_write(*stream, net::buffer(chunk), w.handler());
    settle();
    ASSERT_FALSE(w.done);
    std::array<char, 64 << 10> sink{};
    for (int i = 0; i < 8 && peer->available() > 0; ++i) peer->read_some(net::buffer(sink));  // room again
    EXPECT_EQ(stream->send_now(net::buffer(hello), ec), 0u) << "bytes beside a pending write";
    EXPECT_FALSE(ec);

    // The peer resets the connection: an error, not "would block".
    peer->set_option(net::socket_base::linger(true, 0));
    peer->close();
    stream->close();
    // A closed stream sends nothing and reports nothing; the pending write ends aborted.
    EXPECT_EQ(stream->send_now(net::buffer(hello), ec), 0u);
    EXPECT_FALSE(ec);
    run_until(w);
    EXPECT_TRUE(w.done);
}

TEST_F(swept_stream_test, SendNowToAPeerThatResetIsAnError) {
    peer->set_option(net::socket_base::linger(true, 0));
    peer->close();  // RST, delivered on loopback before close returns
    boost::system::error_code ec;
    const std::string hello = "hello";
    std::size_t sent = 0;
    for (int i = 0; i < 3 && !ec; ++i) sent += stream->send_now(net::buffer(hello), ec);
    EXPECT_TRUE(ec == net::error::connection_reset || ec == net::error::broken_pipe) << ec.message();
    EXPECT_EQ(sent, 0u);
}
