// The streaming test upstream (stream_upstream.hpp) checked directly, without a gateway, so the
// passthrough streaming tests can trust what it sends, reads and records.
#include <gtest/gtest.h>

#include <future>
#include <latch>
#include <sstream>
#include <thread>

#include "tests/integration/stream_upstream.hpp"

using namespace batchgate::testing;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

constexpr std::uint64_t mib = 1024 * 1024;

// Polls pred every 5 ms for up to `limit`.
template <class Pred>
bool eventually(std::chrono::milliseconds limit, Pred pred) {
    const auto end = clock_type::now() + limit;
    while (!pred()) {
        if (clock_type::now() > end) return false;
        std::this_thread::sleep_for(5ms);
    }
    return true;
}

struct checked_get {
    stream_result result;
    pattern_check check;
    std::size_t pieces = 0;
};

checked_get get_checked(unsigned short port, const std::string& target, stream_options options = {}) {
    checked_get out;
    out.result = stream_get(port, target, {}, [&](std::string_view piece, clock_type::time_point) {
        out.check(piece);
        ++out.pieces;
    }, options);
    return out;
}

// A blocking client on one connection, for keep-alive checks.
struct raw_connection {
    net::io_context ioc;
    tcp::socket socket{ioc};
    beast::flat_buffer buffer;
    explicit raw_connection(unsigned short port) {
        socket.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
    }
    http::response<http::string_body> request(const std::string& target, http::verb method = http::verb::get,
                                              std::string body = "") {
        http::request<http::string_body> req{method, target, 11};
        req.set(http::field::host, "test");
        if (!body.empty()) {
            req.body() = std::move(body);
            req.prepare_payload();
        }
        http::write(socket, req);
        http::response_parser<http::string_body> p;
        p.body_limit(64 * mib);
        http::read(socket, buffer, p);
        return p.release();
    }
};

}  // namespace

TEST(StreamUpstream, PatternHelpersAgreeWithTheFormula) {
    std::string expect;
    for (std::uint64_t i = 0; i < 80000; ++i) expect.push_back(pattern_byte(i));
    std::string made(expect.size(), '\0');
    fill_pattern(0, made.data(), made.size());
    EXPECT_EQ(made, expect);
    // Offsets across the table's wrap, and far out.
    for (std::uint64_t off : {1ull, 25999ull, 26000ull, 51999ull, 3000000007ull}) {
        std::string piece(30000, '\0');
        fill_pattern(off, piece.data(), piece.size());
        for (std::size_t j = 0; j < piece.size(); ++j) ASSERT_EQ(piece[j], pattern_byte(off + j)) << off << "+" << j;
        EXPECT_TRUE(pattern_matches(off, piece));
        piece[12345] ^= 1;
        EXPECT_FALSE(pattern_matches(off, piece));
    }
    EXPECT_EQ(pattern_byte(0), 'a');
    EXPECT_EQ(pattern_byte(1), 'h');
}

TEST(StreamUpstream, SmallBytesInEachFraming) {
    stream_upstream up;
    for (std::string mode : {"length", "chunked", "close"}) {
        SCOPED_TRACE(mode);
        auto got = get_checked(up.port(), "/bytes/1000?mode=" + mode);
        EXPECT_EQ(got.result.status, 200);
        EXPECT_TRUE(got.result.complete) << got.result.error.message();
        EXPECT_FALSE(got.result.error);
        EXPECT_EQ(got.result.bytes, 1000u);
        EXPECT_EQ(got.check.bytes, 1000u);
        EXPECT_TRUE(got.check.ok);
        EXPECT_EQ(got.result.body.size(), 1000u);
        EXPECT_EQ(got.result.header("Content-Length"), mode == "length" ? "1000" : "");
        EXPECT_EQ(got.result.header("Transfer-Encoding"), mode == "chunked" ? "chunked" : "");
        EXPECT_EQ(got.result.header("Connection"), mode == "close" ? "close" : "");
    }
    auto empty = get_checked(up.port(), "/bytes/0?mode=chunked");
    EXPECT_EQ(empty.result.status, 200);
    EXPECT_TRUE(empty.result.complete);
    EXPECT_EQ(empty.result.bytes, 0u);
}

TEST(StreamUpstream, LargeBytesStreamInEachFraming) {
    stream_upstream up;
    for (std::string mode : {"length", "chunked", "close"}) {
        SCOPED_TRACE(mode);
        const auto before = up.bytes_sent();
        auto got = get_checked(up.port(), "/bytes/" + std::to_string(64 * mib) + "?mode=" + mode);
        EXPECT_EQ(got.result.status, 200);
        EXPECT_TRUE(got.result.complete) << got.result.error.message();
        EXPECT_EQ(got.check.bytes, 64 * mib);
        EXPECT_TRUE(got.check.ok);
        EXPECT_EQ(got.result.body.size(), stream_result::body_cap);  // only the head is kept
        EXPECT_GT(got.pieces, 64u);  // many pieces, not one buffer
        EXPECT_EQ(up.bytes_sent() - before, 64 * mib);
    }
}

TEST(StreamUpstream, BytesPiecesAndDelay) {
    stream_upstream up;
    const auto start = clock_type::now();
    std::vector<clock_type::time_point> at;
    pattern_check check;
    auto res = stream_get(up.port(), "/bytes/10000?mode=chunked&chunk=1000&delay_ms=20", {},
                          [&](std::string_view piece, clock_type::time_point t) {
                              check(piece);
                              at.push_back(t);
                          });
    EXPECT_TRUE(res.complete);
    EXPECT_TRUE(check.ok);
    EXPECT_EQ(check.bytes, 10000u);
    EXPECT_GE(clock_type::now() - start, 180ms);  // nine pauses
    EXPECT_GE(at.size(), 5u);                     // pieces came one by one, not at the end
    EXPECT_GE(at.back() - at.front(), 150ms);
}

TEST(StreamUpstream, BadModeAndUnknownPaths) {
    stream_upstream up;
    EXPECT_EQ(stream_get(up.port(), "/bytes/10?mode=gzip").status, 400);
    EXPECT_EQ(stream_get(up.port(), "/nothing").status, 404);
    EXPECT_EQ(stream_get(up.port(), "/bytes/x").status, 404);
    EXPECT_EQ(stream_get(up.port(), "/ws").status, 426);
    auto head = stream_get(up.port(), "/bytes/5000", {}, nullptr, {.method = "HEAD"});
    EXPECT_EQ(head.status, 200);
    EXPECT_EQ(head.header("content-length"), "5000");
    EXPECT_TRUE(head.complete);
    EXPECT_EQ(head.bytes, 0u);
}

TEST(StreamUpstream, KeepAliveAndConnectionCount) {
    stream_upstream up;
    {
        raw_connection conn(up.port());
        auto a = conn.request("/bytes/100");
        auto b = conn.request("/bytes/100?mode=chunked");
        auto c = conn.request("/sink", http::verb::post, "ahovcjqx");
        auto d = conn.request("/echo-headers", http::verb::post, "some body");
        auto e = conn.request("/nothing");
        EXPECT_EQ(a.body().size(), 100u);
        EXPECT_EQ(b.body().size(), 100u);
        EXPECT_EQ(nlohmann::json::parse(c.body())["bytes"], 8);
        EXPECT_EQ(nlohmann::json::parse(d.body())["body_bytes"], 9);
        EXPECT_EQ(e.result_int(), 404);
        EXPECT_EQ(up.connections_accepted(), 1u);
        EXPECT_EQ(up.requests(), 5u);
        EXPECT_EQ(up.open_connections(), 1u);

        // close-delimited: the answer ends the connection
        auto f = conn.request("/bytes/100?mode=close");
        EXPECT_EQ(f.body().size(), 100u);
        char byte;
        beast::error_code ec;
        conn.socket.read_some(net::buffer(&byte, 1), ec);
        EXPECT_EQ(ec, net::error::eof);
    }
    EXPECT_TRUE(eventually(2s, [&] { return up.open_connections() == 0; }));
    get_checked(up.port(), "/bytes/1");
    EXPECT_EQ(up.connections_accepted(), 2u);
}

TEST(StreamUpstream, SinkReadsContentLengthAndChunkedUploads) {
    stream_upstream up;
    for (bool chunked : {false, true}) {
        for (std::uint64_t n : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{100000}, 64 * mib}) {
            SCOPED_TRACE(std::to_string(n) + (chunked ? " chunked" : " length"));
            const auto before = up.sink_bytes();
            auto res = stream_upload(up.port(), "/sink", n, chunked);
            EXPECT_EQ(res.status, 200) << res.error.message();
            EXPECT_TRUE(res.sent_all) << res.write_error.message();
            EXPECT_EQ(res.bytes_sent, n);
            const auto answer = res.json();
            EXPECT_EQ(answer["bytes"], n);
            EXPECT_EQ(answer["pattern_ok"], true);
            EXPECT_EQ(answer["chunked"], chunked);
            EXPECT_EQ(up.sink_bytes() - before, n);
        }
    }
    auto put = stream_upload(up.port(), "/sink", 5000, true, {.method = "PUT", .piece = 700});
    EXPECT_EQ(put.json()["bytes"], 5000);
    EXPECT_EQ(put.json()["pattern_ok"], true);
}

TEST(StreamUpstream, SinkSeesWrongBytes) {
    stream_upstream up;
    raw_connection conn(up.port());
    auto res = conn.request("/sink", http::verb::post, "ahovcjqy");  // last byte off
    auto answer = nlohmann::json::parse(res.body());
    EXPECT_EQ(answer["bytes"], 8);
    EXPECT_EQ(answer["pattern_ok"], false);
    EXPECT_EQ(answer["chunked"], false);
}

TEST(StreamUpstream, SinkCountsWhileTheUploadComesIn) {
    stream_upstream up;
    auto upload = std::async(std::launch::async, [&] {
        return stream_upload(up.port(), "/sink", 20 * 10000, false, {.piece = 10000, .piece_delay = 20ms});
    });
    // Part way through, part of the body has been counted: the sink does not wait for all of it.
    EXPECT_TRUE(eventually(5s, [&] { return up.sink_bytes() >= 50000; }));
    EXPECT_LT(up.sink_bytes(), 200000u);
    auto res = upload.get();
    EXPECT_EQ(res.json()["bytes"], 200000);
    EXPECT_EQ(up.sink_bytes(), 200000u);
}

TEST(StreamUpstream, SinkAnswersExpectContinue) {
    stream_upstream up;
    auto res = stream_upload(up.port(), "/sink", 300000, true, {.headers = {{"Expect", "100-continue"}}});
    EXPECT_EQ(res.status, 200);  // the 100 was skipped
    EXPECT_EQ(res.json()["bytes"], 300000);
    EXPECT_EQ(res.json()["pattern_ok"], true);
}

TEST(StreamUpstream, EventsArriveOneByOneGapApart) {
    stream_upstream up;
    std::string text;
    std::vector<clock_type::time_point> arrived;  // one per complete event
    auto res = stream_get(up.port(), "/events?n=10&gap_ms=50", {}, [&](std::string_view piece, clock_type::time_point t) {
        text.append(piece);
        for (auto pos = text.find("\n\n"); pos != std::string::npos; pos = text.find("\n\n")) {
            arrived.push_back(t);
            text.erase(0, pos + 2);
        }
    });
    EXPECT_EQ(res.status, 200);
    EXPECT_TRUE(res.complete);
    EXPECT_EQ(res.header("content-type"), "text/event-stream");
    EXPECT_EQ(res.header("transfer-encoding"), "chunked");
    EXPECT_TRUE(text.empty());
    ASSERT_EQ(arrived.size(), 10u);
    const auto sent = up.event_sent_times();
    ASSERT_EQ(sent.size(), 10u);
    for (std::size_t i = 0; i < arrived.size(); ++i) {
        if (i > 0) {
            EXPECT_GE(sent[i] - sent[i - 1], 50ms) << i;
        }
        // Each event reached the client before the next was sent: relayed one by one, not
        // gathered (timing bounds tighter than the gap fail on a loaded machine).
        EXPECT_GE(arrived[i], sent[i]) << i;
        if (i + 1 < arrived.size()) {
            EXPECT_LT(arrived[i], sent[i + 1]) << i;
        }
    }
    EXPECT_GE(arrived.back() - arrived.front(), 400ms);
    // The body carries the index and the send time.
    std::istringstream first(res.body);
    std::string data;
    long long index = -1, ms = 0;
    first >> data >> index >> ms;
    EXPECT_EQ(data, "data:");
    EXPECT_EQ(index, 0);
    EXPECT_EQ(ms, std::chrono::duration_cast<std::chrono::milliseconds>(sent[0].time_since_epoch()).count());
}

TEST(StreamUpstream, DieWithResetEndsMidBody) {
    stream_upstream up;
    pattern_check check;
    auto res = stream_get(up.port(), "/die?after=1000&length=5000", {}, [&](std::string_view p, auto) { check(p); });
    EXPECT_EQ(res.status, 200);
    EXPECT_EQ(res.header("content-length"), "5000");
    EXPECT_FALSE(res.complete);
    EXPECT_TRUE(res.error);
    EXPECT_LE(res.bytes, 1000u);  // a reset may drop what the client had not read yet
    EXPECT_TRUE(check.ok);
    std::cout << "[ info ] /die with RST: " << res.bytes << " bytes, then " << res.error.message() << "\n";
}

TEST(StreamUpstream, DieWithFinEndsMidBody) {
    stream_upstream up;
    auto res = stream_get(up.port(), "/die?after=100000&length=200000&how=fin");
    EXPECT_EQ(res.status, 200);
    EXPECT_FALSE(res.complete);
    EXPECT_EQ(res.bytes, 100000u);
    EXPECT_EQ(res.error, http::error::partial_message) << res.error.message();
}

TEST(StreamUpstream, SlowHeadWaitsBeforeTheHead) {
    stream_upstream up;
    const auto start = clock_type::now();
    auto res = stream_get(up.port(), "/slow-head?delay_ms=300");
    EXPECT_EQ(res.status, 200);
    EXPECT_EQ(res.body, "slow\n");
    EXPECT_GE(res.head_time - start, 300ms);
}

TEST(StreamUpstream, ConnectionsProceedConcurrently) {
    stream_upstream up;
    const auto start = clock_type::now();
    std::vector<std::thread> clients;
    std::atomic<int> ok{0};
    for (int i = 0; i < 8; ++i)
        clients.emplace_back([&] {
            if (stream_get(up.port(), "/slow-head?delay_ms=300").status == 200) ++ok;
        });
    for (auto& t : clients) t.join();
    EXPECT_EQ(ok, 8);
    EXPECT_LT(clock_type::now() - start, 1500ms);  // not 8 x 300 ms one after another
    EXPECT_EQ(up.connections_accepted(), 8u);
}

TEST(StreamUpstream, EchoHeadersShowsTheRequestAsReceived) {
    stream_upstream up;
    auto res = stream_get(up.port(), "/echo-headers?x=1", {{"X-Thing", "one"}, {"Connection", "keep-alive"}});
    ASSERT_EQ(res.status, 200);
    auto answer = res.json();
    EXPECT_EQ(answer["method"], "GET");
    EXPECT_EQ(answer["target"], "/echo-headers?x=1");
    EXPECT_EQ(answer["version"], "HTTP/1.1");
    EXPECT_EQ(answer["chunked"], false);
    EXPECT_EQ(answer["body_bytes"], 0);
    bool saw = false;
    for (const auto& h : answer["headers"]) saw |= h[0] == "X-Thing" && h[1] == "one";
    EXPECT_TRUE(saw) << answer.dump();

    const auto chunked = stream_upload(up.port(), "/echo-headers", 70000, true).json();
    EXPECT_EQ(chunked["chunked"], true);
    EXPECT_EQ(chunked["body_bytes"], 70000);
    bool te = false;
    for (const auto& h : chunked["headers"]) te |= h[0] == "Transfer-Encoding" && h[1] == "chunked";
    EXPECT_TRUE(te) << chunked.dump();
    auto sized = stream_upload(up.port(), "/echo-headers", 70000, false);
    EXPECT_EQ(sized.json()["chunked"], false);
    EXPECT_EQ(sized.json()["body_bytes"], 70000);
}

TEST(StreamUpstream, WebSocketEchoesTextAndBinary) {
    stream_upstream up;
    ws_client ws(up.port(), "/ws");
    EXPECT_EQ(ws.handshake_response().result_int(), 101);
    ws.send("hello");
    auto a = ws.receive();
    EXPECT_EQ(a.data, "hello");
    EXPECT_FALSE(a.binary);
    std::string blob(1 * mib, '\0');
    fill_pattern(0, blob.data(), blob.size());
    blob[7] = '\0';
    ws.send(blob, true);
    auto b = ws.receive();
    EXPECT_TRUE(b.binary);
    EXPECT_EQ(b.data, blob);
    ws.send("again");
    EXPECT_EQ(ws.receive().data, "again");
    ws.close();
    EXPECT_TRUE(eventually(2s, [&] { return up.open_connections() == 0; }));
}

TEST(StreamUpstream, WebSocketRefusedWith403) {
    stream_upstream up;
    net::io_context ioc;
    websocket::stream<tcp::socket> ws(ioc);
    ws.next_layer().connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), up.port()));
    websocket::response_type res;
    beast::error_code ec;
    ws.handshake(res, "127.0.0.1", "/ws-refuse", ec);
    EXPECT_EQ(ec, websocket::error::upgrade_declined) << ec.message();
    EXPECT_EQ(res.result_int(), 403);
    EXPECT_THROW(ws_client(up.port(), "/ws-refuse"), beast::system_error);
}

TEST(StreamUpstream, ClientStoppingEarlyClosesTheServerSide) {
    stream_upstream up;
    std::uint64_t seen = 0;
    auto res = stream_get(up.port(), "/bytes/" + std::to_string(1024 * mib), {}, [&](std::string_view p, auto) {
        seen += p.size();
        return seen < 4 * mib;
    });
    EXPECT_TRUE(res.stopped);
    EXPECT_FALSE(res.complete);
    EXPECT_TRUE(eventually(5s, [&] { return up.open_connections() == 0; }));
    EXPECT_LT(up.bytes_sent(), 64 * mib);  // the writer stopped with the client, far from 1 GiB
}

TEST(StreamUpstream, SlowReaderStallsTheWriter) {
    stream_upstream up;
    std::atomic<bool> release{false};
    std::atomic<std::uint64_t> got{0};
    auto client = std::async(std::launch::async, [&] {
        return stream_get(up.port(), "/bytes/" + std::to_string(256 * mib), {}, [&](std::string_view p, auto) {
            got += p.size();
            while (!release) std::this_thread::sleep_for(5ms);  // stop reading after the first piece
        });
    });
    EXPECT_TRUE(eventually(5s, [&] { return got > 0; }));
    std::this_thread::sleep_for(300ms);
    const auto stalled = up.bytes_sent();
    std::this_thread::sleep_for(200ms);
    EXPECT_EQ(up.bytes_sent(), stalled);          // the writer waits for the reader
    EXPECT_LT(stalled, 64 * mib);                 // socket buffers' worth, not the body
    release = true;
    auto res = client.get();
    EXPECT_TRUE(res.complete);
    EXPECT_EQ(res.bytes, 256 * mib);
}

TEST(StreamUpstream, IdleTimeoutOnTheClient) {
    stream_upstream up;
    auto res = stream_get(up.port(), "/slow-head?delay_ms=2000", {}, nullptr, {.idle_timeout = 200ms});
    EXPECT_EQ(res.status, 0);
    EXPECT_EQ(res.error, net::error::timed_out);
}

TEST(StreamUpstream, StopsCleanlyMidTransfer) {
    auto up = std::make_unique<stream_upstream>();
    const auto port = up->port();
    std::atomic<std::uint64_t> got{0};
    auto download = std::async(std::launch::async, [&] {
        return stream_get(port, "/bytes/" + std::to_string(2048 * mib) + "?mode=chunked", {}, [&](std::string_view p, auto) {
            got += p.size();
        });
    });
    auto upload = std::async(std::launch::async, [&] {
        return stream_upload(port, "/sink", 2048 * mib, true, {.piece_delay = 1ms});
    });
    auto events = std::async(std::launch::async, [&] { return stream_get(port, "/events?n=1000&gap_ms=50"); });
    auto slow = std::async(std::launch::async, [&] { return stream_get(port, "/slow-head?delay_ms=60000"); });
    ws_client ws(port, "/ws");
    ws.send("x");
    EXPECT_EQ(ws.receive().data, "x");
    EXPECT_TRUE(eventually(5s, [&] { return got > 0 && up->sink_bytes() > 0 && up->open_connections() == 5; }));

    const auto start = clock_type::now();
    up.reset();  // every session is mid-way
    EXPECT_LT(clock_type::now() - start, 2s);

    auto d = download.get();
    EXPECT_FALSE(d.complete);
    EXPECT_TRUE(d.error);
    auto u = upload.get();
    EXPECT_FALSE(u.sent_all);
    auto e = events.get();
    EXPECT_FALSE(e.complete);
    auto s = slow.get();
    EXPECT_EQ(s.status, 0);
    EXPECT_THROW(ws.receive(), beast::system_error);
}

TEST(StreamUpstream, RssOfThisProcess) {
    const long rss = rss_kib();
    EXPECT_GT(rss, 100);
    EXPECT_EQ(rss_kib(-5), -1);
}
