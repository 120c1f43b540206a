// net/wire.hpp: a head's field lines, and the per-thread block cache of per-request objects;
// net/request.hpp: a composed answer read back as a Beast response.
#include "net/wire.hpp"
#include "net/hop_by_hop.hpp"
#include "net/request.hpp"

#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <gtest/gtest.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

using namespace batchgate::gateway;

TEST(wire, AppendFieldWritesOneLineAfterWhatIsThere) {
    std::string out = "GET / HTTP/1.1\r\n";
    wire::append_field(out, "Host", "example.com:8080");
    wire::append_field(out, "X-Empty", "");
    wire::append_field(out, "", "");  // never asked for; still exact bytes, no read of a null view
    wire::append_field(out, std::string_view(), std::string_view());
    EXPECT_EQ(out, "GET / HTTP/1.1\r\nHost: example.com:8080\r\nX-Empty: \r\n: \r\n: \r\n");
}

TEST(wire, AppendFieldGrowsPastAnyReserve) {
    std::string out;
    const std::string value(5000, 'v');
    for (int i = 0; i < 20; ++i) wire::append_field(out, "X-Long", value);
    EXPECT_EQ(out.size(), 20u * (6 + 2 + 5000 + 2));
    EXPECT_EQ(out.substr(0, 10), "X-Long: vv");
    EXPECT_EQ(out.substr(out.size() - 4), "vv\r\n");
}

TEST(wire, StatusLinesKeepTheirReasonAndMakeNoneUp) {
    namespace http = boost::beast::http;
    auto line = [](unsigned status, std::string_view reason) {
        http::response<http::string_body> res{static_cast<http::status>(status), 11};
        if (!reason.empty()) res.reason(reason);
        std::string out;
        wire::append_status_line(out, res);
        return out;
    };
    EXPECT_EQ(line(200, ""), "HTTP/1.1 200 OK\r\n");  // the gateway's own answers set no reason
    EXPECT_EQ(line(404, "Gone Away"), "HTTP/1.1 404 Gone Away\r\n");
    EXPECT_EQ(line(299, ""), "HTTP/1.1 299 \r\n");  // not "<unknown-status>"
    EXPECT_EQ(line(299, "Fine"), "HTTP/1.1 299 Fine\r\n");
}

TEST(wire, ComposedStatusLinesGiveTheStandardReasonOrNone) {
    auto line = [](unsigned version, unsigned status) {
        std::string out;
        wire::append_status_line(out, version, status);
        return out;
    };
    EXPECT_EQ(line(11, 200), "HTTP/1.1 200 OK\r\n");
    EXPECT_EQ(line(10, 404), "HTTP/1.0 404 Not Found\r\n");
    EXPECT_EQ(line(11, 207), "HTTP/1.1 207 Multi-Status\r\n");
    EXPECT_EQ(line(11, 299), "HTTP/1.1 299 \r\n");
    EXPECT_EQ(line(11, 422), "HTTP/1.1 422 Unprocessable Entity\r\n");
    EXPECT_EQ(line(11, 520), "HTTP/1.1 520 \r\n");
    std::string out;
    wire::append_field(out, "Content-Length", std::size_t{0});
    wire::append_field(out, "X-Size", std::size_t{18446744073709551615u});
    EXPECT_EQ(out, "Content-Length: 0\r\nX-Size: 18446744073709551615\r\n");
}

// The batcher sending a caller's write and its connection answering it at the drain deadline
// race; one compare-and-swap decides: sent (a retry may claim again) or abandoned (never sent).
// A buffered request's X-Forwarded-For that this hop would make longer than Beast can hold a
// field is refused (the caller answers 431), the fields untouched; one that fits is set.
TEST(hop_by_hop, AForwardedForListTooLongForAFieldIsRefused) {
    using namespace batchgate::gateway;
    request_t req{http::verb::get, "/", 11};
    req.set(http::field::host, "gw");
    req.set("X-Forwarded-For", std::string(max_field_value - 9, '1'));
    auto lines = [](const request_t& r) {
        std::vector<std::pair<std::string, std::string>> out;
        for (const auto& f : r) out.emplace_back(f.name_string(), f.value());
        return out;
    };
    auto refused = req;
    EXPECT_FALSE(prepare_for_upstream(refused, "10.0.0.1", "http"));  // ", 10.0.0.1": 10 more, one too many
    EXPECT_EQ(lines(refused), lines(req)) << "fields changed although refused";
    auto fits = req;
    EXPECT_TRUE(prepare_for_upstream(fits, "1.1.1.1", "http"));  // 9 more: at the limit
    EXPECT_EQ(fits["X-Forwarded-For"].size(), max_field_value);
    EXPECT_EQ(fits.count(http::field::host), 0u);
    EXPECT_EQ(fits["X-Forwarded-Host"], "gw");
}

TEST(caller_flags, SendingAndAbandoningDecideOnce) {
    caller_flags sent_first;
    EXPECT_TRUE(sent_first.claim_for_sending());
    EXPECT_TRUE(sent_first.claim_for_sending());  // a retry of the same batch
    EXPECT_FALSE(sent_first.abandon());           // it went: the connection must say so
    EXPECT_FALSE(sent_first.abandoned_now());
    caller_flags abandoned_first;
    EXPECT_TRUE(abandoned_first.abandon());
    EXPECT_TRUE(abandoned_first.abandon());
    EXPECT_FALSE(abandoned_first.claim_for_sending());  // answered: it never goes
    EXPECT_TRUE(abandoned_first.abandoned_now());
    // Raced from two threads many times: exactly one side wins each time.
    for (int i = 0; i < 2000; ++i) {
        caller_flags f;
        bool claimed = false, abandoned = false;
        std::thread t([&] { claimed = f.claim_for_sending(); });
        abandoned = f.abandon();
        t.join();
        EXPECT_NE(claimed, abandoned) << i;
    }
}

TEST(answer, AComposedAnswerReadsBackAsTheFieldsItWasComposedFrom) {
    composed_answer a;
    a.status = 429;
    wire::append_field(a.fields, "Content-Type", "application/json");
    wire::append_field(a.fields, "retry-after", "1");
    wire::append_field(a.fields, "WWW-Authenticate", "Basic realm=\"a: b\"");
    wire::append_field(a.fields, "WWW-Authenticate", "Bearer");
    wire::append_field(a.fields, "X-Empty", "");
    wire::append_field(a.fields, "Content-Length", std::size_t{2});
    a.body = "{}";
    const auto res = to_response(answer(a), 10);
    EXPECT_EQ(res.result_int(), 429);
    EXPECT_EQ(res.version(), 10u);
    EXPECT_EQ(res.body(), "{}");
    std::vector<std::pair<std::string, std::string>> fields;
    for (const auto& f : res) fields.emplace_back(f.name_string(), f.value());
    const std::vector<std::pair<std::string, std::string>> want{
        {"Content-Type", "application/json"},       {"retry-after", "1"}, {"WWW-Authenticate", "Basic realm=\"a: b\""},
        {"WWW-Authenticate", "Bearer"}, {"X-Empty", ""},      {"Content-Length", "2"}};
    EXPECT_EQ(fields, want);

    response_t plain{http::status::created, 11};
    plain.set(http::field::location, "/x");
    const auto same = to_response(answer(plain), 10);  // a Beast response is one already
    EXPECT_EQ(same.result_int(), 201);
    EXPECT_EQ(same.version(), 10u);
    EXPECT_EQ(same[http::field::location], "/x");
}

TEST(thread_block_cache, ABlockFreedIsTakenAgainForItsSizeOnly) {
    if (!thread_block_cache::enabled) GTEST_SKIP() << "off under AddressSanitizer";
    void* a = thread_block_cache::take(1312);
    thread_block_cache::give(a, 1312);
    void* other = thread_block_cache::take(1400);  // another size: not a's block
    EXPECT_NE(other, a);
    EXPECT_EQ(thread_block_cache::take(1312), a);  // the same size: the block back
    thread_block_cache::give(other, 1400);
    thread_block_cache::give(a, 1312);
}

TEST(thread_block_cache, KeepsAtMostDepthBlocksOfASizeAndGivesThemBackInAnyOrder) {
    if (!thread_block_cache::enabled) GTEST_SKIP() << "off under AddressSanitizer";
    const std::size_t size = 2048;
    std::vector<void*> blocks;
    for (std::size_t i = 0; i < thread_block_cache::depth + 10; ++i) blocks.push_back(thread_block_cache::take(size));
    for (void* b : blocks) thread_block_cache::give(b, size);  // the last 10 are freed, not kept
    std::set<void*> kept(blocks.begin(), blocks.begin() + thread_block_cache::depth);
    std::set<void*> again;
    for (std::size_t i = 0; i < thread_block_cache::depth; ++i) again.insert(thread_block_cache::take(size));
    EXPECT_EQ(again, kept);
    for (void* b : again) thread_block_cache::give(b, size);
}

TEST(thread_block_cache, ABlockFreedOnAnotherThreadStaysThere) {
    if (!thread_block_cache::enabled) GTEST_SKIP() << "off under AddressSanitizer";
    const std::size_t size = 3000;
    void* block = thread_block_cache::take(size);
    void* taken_there = nullptr;
    std::thread([&] {
        thread_block_cache::give(block, size);
        taken_there = thread_block_cache::take(size);
        thread_block_cache::give(taken_there, size);
    }).join();  // the thread's cache frees it as the thread ends
    EXPECT_EQ(taken_there, block);
}

namespace {
struct big {
    explicit big(int* alive) : alive(alive) { ++*alive; }
    ~big() { --*alive; }
    int* alive;
    char payload[1200] = {};
};
}  // namespace

TEST(thread_block_cache, SharedObjectsMadeThroughItAreBuiltAndDestroyedOnce) {
    int alive = 0;
    std::vector<std::shared_ptr<big>> objects;
    for (int i = 0; i < 100; ++i) objects.push_back(std::allocate_shared<big>(thread_cached_allocator<big>(), &alive));
    EXPECT_EQ(alive, 100);
    objects.resize(30);
    EXPECT_EQ(alive, 30);
    for (int i = 0; i < 70; ++i) objects.push_back(std::allocate_shared<big>(thread_cached_allocator<big>(), &alive));
    std::set<big*> distinct;
    for (auto& o : objects) distinct.insert(o.get());
    EXPECT_EQ(distinct.size(), 100u);  // no block handed out twice
    objects.clear();
    EXPECT_EQ(alive, 0);
}

TEST(head_arena, AParsedHeadsFieldsLiveInItAndSpillToTheHeapWhenItIsFull) {
    head_arena arena;
    using parser_t = http::response_parser<http::empty_body, arena_allocator<char>>;
    // Twice with the same arena (reset between): the second head reads as it came, not the first.
    for (int round = 0; round < 2; ++round) {
        arena.reset();
        parser_t parser(std::piecewise_construct, std::make_tuple(), std::make_tuple(arena_allocator<char>(arena)));
        parser.skip(true);
        // Some 40 fields of ~60 bytes each: more than the arena holds, so the last ones are on the heap.
        std::string head = "HTTP/1.1 299 Round " + std::to_string(round) + "\r\n";
        for (int i = 0; i < 40; ++i)
            head += "X-Field-" + std::to_string(i) + ": value-" + std::to_string(round) + "-" + std::string(40, 'v') +
                    "\r\n";
        head += "\r\n";
        boost::system::error_code ec;
        parser.put(boost::asio::buffer(head), ec);
        ASSERT_FALSE(ec) << ec.message();
        ASSERT_TRUE(parser.is_header_done());
        const auto& res = parser.get();
        EXPECT_EQ(res.result_int(), 299);
        EXPECT_EQ(res.reason(), "Round " + std::to_string(round));
        int i = 0;
        for (const auto& f : res) {
            EXPECT_EQ(f.name_string(), "X-Field-" + std::to_string(i));
            EXPECT_EQ(f.value(), "value-" + std::to_string(round) + "-" + std::string(40, 'v'));
            ++i;
        }
        EXPECT_EQ(i, 40);
    }
}

TEST(head_arena, BlocksComeFromItsBufferUntilItIsFullAndItStartsOverWhenReset) {
    head_arena arena;
    arena_allocator<char> a(arena);
    char* first = a.allocate(100);
    char* second = a.allocate(100);
    constexpr std::size_t align = __STDCPP_DEFAULT_NEW_ALIGNMENT__;
    EXPECT_EQ(static_cast<std::size_t>(second - first), (100 + align - 1) / align * align);  // rounded up
    std::memset(first, 'a', 100);
    std::memset(second, 'b', 100);
    char* big = a.allocate(head_arena::capacity);  // no room left for it: the heap
    EXPECT_TRUE(big < first || big >= first + head_arena::capacity);
    std::memset(big, 'x', head_arena::capacity);
    a.deallocate(big, head_arena::capacity);  // freed (a leak checker would say otherwise)
    a.deallocate(second, 100);
    a.deallocate(first, 100);
    arena.reset();
    EXPECT_EQ(a.allocate(10), first);
    EXPECT_TRUE(arena_allocator<int>(a) == a);
    head_arena other;
    EXPECT_FALSE(arena_allocator<char>(other) == a);
}

#if defined(__SANITIZE_ADDRESS__)
// Under AddressSanitizer the arena's buffer is poisoned but for the blocks in use: a read of a
// field after its set let go of it, or after reset(), is reported. (The report goes to stderr,
// where the death test reads it, whatever ASAN_OPTIONS's log_path says.)
TEST(head_arena, AReadAfterResetOrFreeIsReportedUnderAddressSanitizer) {
    EXPECT_DEATH(
        {
            __sanitizer_set_report_path("stderr");
            head_arena arena;
            auto* p = static_cast<volatile char*>(arena.take(32));
            p[0] = 'x';
            arena.reset();
            (void)p[0];
        },
        "use-after-poison");
    EXPECT_DEATH(
        {
            __sanitizer_set_report_path("stderr");
            head_arena arena;
            arena_allocator<char> a(arena);
            char* p = a.allocate(32);
            a.deallocate(p, 32);
            (void)*static_cast<volatile char*>(p);
        },
        "use-after-poison");
}
#endif

TEST(thread_string_pool, AStringGivenBackIsTakenAgainEmptyWithItsRoom) {
    if (!thread_block_cache::enabled) GTEST_SKIP() << "off under AddressSanitizer";
    std::string s = thread_string_pool::take();
    s.assign(300, 'h');
    const char* room = s.data();
    thread_string_pool::give(s);
    EXPECT_TRUE(s.empty());
    std::string again = thread_string_pool::take();
    EXPECT_EQ(again.data(), room);
    EXPECT_TRUE(again.empty());
    EXPECT_GE(again.capacity(), 300u);
    // Too big a room is not kept; a string with none on the heap neither.
    std::string huge(thread_string_pool::max_room + 1, 'x');
    thread_string_pool::give(huge);
    EXPECT_EQ(huge.size(), thread_string_pool::max_room + 1);  // still the caller's
    std::string small = "id";
    thread_string_pool::give(small);
    EXPECT_EQ(small, "id");
    thread_string_pool::give(again);
}

TEST(thread_string_pool, KeepsAtMostDepthStrings) {
    if (!thread_block_cache::enabled) GTEST_SKIP() << "off under AddressSanitizer";
    std::vector<std::string> out;
    std::set<const char*> rooms;
    for (std::size_t i = 0; i < thread_string_pool::depth + 10; ++i) {
        out.push_back(thread_string_pool::take());
        out.back().assign(100, 'x');
    }
    for (auto& s : out) thread_string_pool::give(s);
    std::size_t with_room = 0;
    for (std::size_t i = 0; i < thread_string_pool::depth + 10; ++i) {
        auto s = thread_string_pool::take();
        if (s.capacity() >= 100) ++with_room, rooms.insert(s.data());
    }
    EXPECT_EQ(with_room, thread_string_pool::depth);
    EXPECT_EQ(rooms.size(), thread_string_pool::depth);  // none handed out twice
}

TEST(cached_ptr, AnObjectIsBuiltAndDestroyedOnceAndItsBlockComesBack) {
    int alive = 0;
    big* first = nullptr;
    {
        auto p = make_cached<big>(&alive);
        first = p.get();
        EXPECT_EQ(alive, 1);
    }
    EXPECT_EQ(alive, 0);
    // Another block of that size, taken in between, is not the one freed: the heap would hand
    // out the block it got back last, the cache keeps it for make_cached.
    void* between = ::operator new(sizeof(big));
    auto again = make_cached<big>(&alive);
    if (thread_block_cache::enabled) EXPECT_EQ(again.get(), first);
    ::operator delete(between);
    EXPECT_EQ(alive, 1);
    again.reset();
    EXPECT_EQ(alive, 0);
}
