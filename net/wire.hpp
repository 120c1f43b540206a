// Concrete executor types for the hot path, and HTTP/1.1 message heads serialized into one
// contiguous buffer. Beast's serializer hands the socket one buffer per header field and
// copies type-erased executors on every step; on a proxy that does nothing else per request
// that was a fifth of the CPU (bench/README.md has the profile).
#pragma once

#include <array>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/asio/buffer.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/basic_waitable_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/status.hpp>
#include <sanitizer/asan_interface.h>

#include "text/http_date.hpp"

namespace batchgate::gateway {

// Every connection (client or upstream) runs on the io_context of one worker thread (a shard,
// net/shard.hpp), run by that thread alone: its handlers never run concurrently, so it
// needs no strand.
using executor_t = boost::asio::io_context::executor_type;
using socket_t = boost::asio::basic_stream_socket<boost::asio::ip::tcp, executor_t>;
using conn_timer = boost::asio::basic_waitable_timer<std::chrono::steady_clock,
                                                       boost::asio::wait_traits<std::chrono::steady_clock>, executor_t>;

// An allocator asio does not recycle (it swaps std::allocator for its per-thread cache of
// blocks, each the size of whatever operation freed it, often a read's ~300 bytes). For an
// operation a connection keeps pending a long time, such as a waiting caller's hang-up
// watch: a block of the operation's own size.
template <class T>
struct exact_allocator {
    using value_type = T;
    exact_allocator() noexcept = default;
    template <class U>
    exact_allocator(const exact_allocator<U>&) noexcept {}
    T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T))); }
    void deallocate(T* p, std::size_t) noexcept { ::operator delete(p); }
    template <class U>
    bool operator==(const exact_allocator<U>&) const noexcept { return true; }
};

// A block cache of the calling thread: freed blocks of up to `sizes` sizes, up to `depth` of
// each, kept for the next allocation of their exact size. For objects made once per request and
// too big for glibc's per-thread cache (1,032 bytes), such as a passthrough exchange (2.4 KiB):
// malloc and free of those searched the bins and cost about 1,000 instructions a request. A loop
// frees a burst of them (one epoll round of answers) before it makes the next burst, hence the
// depth. Blocks freed on another thread (an exchange whose upstream side ends last) go to that
// thread's cache. A thread holds at most sizes x depth blocks; they are freed when it ends.
class thread_block_cache {
public:
    static constexpr std::size_t sizes = 8;
    static constexpr std::size_t depth = 64;
    // Off under AddressSanitizer: a block in the cache would hide a use after free from it.
#if defined(__SANITIZE_ADDRESS__)
    static constexpr bool enabled = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    static constexpr bool enabled = false;
#else
    static constexpr bool enabled = true;
#endif
#else
    static constexpr bool enabled = true;
#endif

    static void* take(std::size_t size) {
        if (enabled)
            for (auto& c : local().classes)
                if (c.size == size && c.top) {
                    auto* b = c.top;
                    c.top = b->next;
                    --c.count;
                    return b;
                }
        return ::operator new(size);
    }
    static void give(void* block, std::size_t size) noexcept {
        if (enabled && size >= sizeof(free_block))
            for (auto& c : local().classes)
                if (c.size == size || c.count == 0) {
                    if (c.count == depth) break;
                    c.size = size;
                    c.top = ::new (block) free_block{c.top};
                    ++c.count;
                    return;
                }
        ::operator delete(block);
    }

private:
    struct free_block {
        free_block* next;
    };
    struct size_class {
        std::size_t size = 0;
        std::size_t count = 0;
        free_block* top = nullptr;
    };
    struct cache {
        std::array<size_class, sizes> classes{};
        cache() = default;
        cache(const cache&) = delete;
        cache& operator=(const cache&) = delete;
        ~cache() {
            for (auto& c : classes)
                while (c.top) ::operator delete(std::exchange(c.top, c.top->next));
        }
    };
    static cache& local() noexcept {
        thread_local cache c;
        return c;
    }
};

// Strings made per request, their room kept: a thread's spare strings, handed out empty. A
// passthrough exchange's two heads were two allocations a request (a hundred-odd instructions
// each); they come back once written, so a long stream or tunnel does not hold them. At most
// `depth` strings a thread, of at most `max_room` bytes of room each (a bigger one is freed as
// usual); freed when the thread ends. Off under AddressSanitizer, as the block cache is.
class thread_string_pool {
public:
    static constexpr std::size_t depth = 256;  // two per exchange in flight: a burst of over 100 fits
    static constexpr std::size_t max_room = 4096;

    static std::string take() {
        auto& spare = local();
        if (!thread_block_cache::enabled || spare.empty()) return {};
        std::string s = std::move(spare.back());
        spare.pop_back();
        s.clear();
        return s;
    }
    // Keeps s's room for the next take() on this thread (s is left empty), unless the pool is
    // full or s has no room worth keeping, or too much (s is then left as it was).
    static void give(std::string& s) noexcept {
        auto& spare = local();
        if (!thread_block_cache::enabled || spare.size() == depth || s.capacity() > max_room ||
            s.capacity() < 2 * sizeof(std::string))  // one on the heap at all
            return;
        spare.push_back(std::move(s));  // reserved: cannot throw
    }

private:
    static std::vector<std::string>& local() noexcept {
        thread_local std::vector<std::string> spare = [] {
            std::vector<std::string> v;
            v.reserve(depth);
            return v;
        }();
        return spare;
    }
};

// An allocator that takes its blocks from thread_block_cache: for std::allocate_shared of an
// object made per request.
template <class T>
struct thread_cached_allocator {
    using value_type = T;
    thread_cached_allocator() noexcept = default;
    template <class U>
    thread_cached_allocator(const thread_cached_allocator<U>&) noexcept {}
    T* allocate(std::size_t n) {
        static_assert(alignof(T) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__, "the cache's blocks come from plain operator new");
        return static_cast<T*>(thread_block_cache::take(n * sizeof(T)));
    }
    void deallocate(T* p, std::size_t n) noexcept { thread_block_cache::give(p, n * sizeof(T)); }
    template <class U>
    bool operator==(const thread_cached_allocator<U>&) const noexcept { return true; }
};

// One object per request from thread_block_cache, owned as a unique_ptr: a client's request
// parser, made for each request (malloc and free of it were a hundred-odd instructions).
template <class T>
struct cached_delete {
    void operator()(T* p) const noexcept {
        p->~T();
        thread_cached_allocator<T>().deallocate(p, 1);
    }
};
template <class T>
using cached_ptr = std::unique_ptr<T, cached_delete<T>>;

template <class T, class... Args>
cached_ptr<T> make_cached(Args&&... args) {
    T* block = thread_cached_allocator<T>().allocate(1);
    try {
        return cached_ptr<T>(::new (block) T(std::forward<Args>(args)...));
    } catch (...) {
        thread_cached_allocator<T>().deallocate(block, 1);
        throw;
    }
}

// Memory for one parsed head's fields. Beast's field set allocates a block per field (name,
// value and links) and one for a response's reason phrase: a relayed answer's few fields were
// four malloc/free pairs and a walk freeing them, a twentieth of a passthrough request. Here
// blocks are cut from a buffer of the arena's own; a head bigger than it takes the rest from
// the heap. Freeing a block of the buffer does nothing: reset() starts over, once the field set
// that used it is gone. Under AddressSanitizer the buffer is poisoned but for the blocks in
// use, so a field read after its set let go of it, or after reset(), is reported.
class head_arena {
public:
    static constexpr std::size_t capacity = 1024;

    head_arena() noexcept { ASAN_POISON_MEMORY_REGION(bytes_, capacity); }
    ~head_arena() { ASAN_UNPOISON_MEMORY_REGION(bytes_, capacity); }  // the memory goes back as it came
    head_arena(const head_arena&) = delete;
    head_arena& operator=(const head_arena&) = delete;

    void* take(std::size_t n) {
        n = rounded(n);
        if (capacity - used_ < n) return ::operator new(n);
        char* block = bytes_ + std::exchange(used_, used_ + n);
        ASAN_UNPOISON_MEMORY_REGION(block, n);
        return block;
    }
    void give(void* block, std::size_t n) noexcept {
        const auto at = reinterpret_cast<std::uintptr_t>(block);
        const auto begin = reinterpret_cast<std::uintptr_t>(bytes_);
        if (at - begin < capacity) {  // one of the buffer's (unsigned: below it wraps past capacity)
            ASAN_POISON_MEMORY_REGION(block, rounded(n));
            return;
        }
        ::operator delete(block);
    }
    // Only once nothing holds a block of the buffer.
    void reset() noexcept {
        ASAN_POISON_MEMORY_REGION(bytes_, capacity);
        used_ = 0;
    }

private:
    static constexpr std::size_t rounded(std::size_t n) noexcept {
        constexpr std::size_t align = __STDCPP_DEFAULT_NEW_ALIGNMENT__;
        return (n + align - 1) / align * align;
    }
    alignas(__STDCPP_DEFAULT_NEW_ALIGNMENT__) char bytes_[capacity];
    std::size_t used_ = 0;
};

// A field set's allocator on a head_arena (Beast's basic_fields takes one): the field set must
// go before the arena does, or is reset. A copy of the set would share the arena (the copy of
// an allocator is the same arena): never copy one out of the exchange that owns the arena.
template <class T>
struct arena_allocator {
    using value_type = T;
    head_arena* arena;
    explicit arena_allocator(head_arena& a) noexcept : arena(&a) {}
    template <class U>
    arena_allocator(const arena_allocator<U>& o) noexcept : arena(o.arena) {}
    T* allocate(std::size_t n) {
        static_assert(alignof(T) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__, "blocks are aligned as operator new's");
        return static_cast<T*>(arena->take(n * sizeof(T)));
    }
    void deallocate(T* p, std::size_t n) noexcept { arena->give(p, n * sizeof(T)); }
    template <class U>
    bool operator==(const arena_allocator<U>& o) const noexcept {
        return arena == o.arena;
    }
};

namespace wire {

// "Name: value\r\n": one grow of `out` and two copies (a head is some fifteen of these per
// request; four appends each, two of them strlen'd, were 6% of a passthrough request).
inline void append_field(std::string& out, std::string_view name, std::string_view value) {
    const std::size_t at = out.size();
    out.resize(at + name.size() + value.size() + 4);
    char* p = out.data() + at;
    if (!name.empty()) std::memcpy(p, name.data(), name.size());  // an empty view's data may be null
    p += name.size();
    *p++ = ':';
    *p++ = ' ';
    if (!value.empty()) std::memcpy(p, value.data(), value.size());
    p += value.size();
    *p++ = '\r';
    *p = '\n';
}

// The bytes "Name: value\r\n" takes for every field: a head written from them is reserved once,
// not grown field by field.
template <class Fields>
std::size_t fields_bytes(const Fields& fields) {
    std::size_t n = 0;
    for (const auto& f : fields) n += f.name_string().size() + f.value().size() + 4;
    return n;
}

// "Name: value\r\n" for each field, then the blank line that ends the head.
template <class Fields>
void append_fields(std::string& out, const Fields& fields) {
    for (const auto& f : fields) append_field(out, f.name_string(), f.value());
    out.append("\r\n", 2);
}

// The reason phrase to write, from an answer's reason() (Beast gives the standard phrase when
// none was set, as on the gateway's own answers). On a status no one registered, a phrase not
// set is Beast's placeholder "<unknown-status>", which no one sent: none is written
// ("HTTP/1.1 299 \r\n" is a valid status line, RFC 9112 section 4).
inline std::string_view reason_phrase(boost::beast::string_view reason, unsigned status) {
    namespace http = boost::beast::http;
    if (http::int_to_status(status) == http::status::unknown && reason == http::obsolete_reason(http::status::unknown))
        return {};
    return {reason.data(), reason.size()};
}

// "HTTP/1.1 200 OK\r\n": a status line; the answer's fields follow (the session writes them).
inline void append_status_line(std::string& out, unsigned version, unsigned status, std::string_view reason) {
    char digits[12];
    const auto end = std::to_chars(digits, digits + sizeof digits, status).ptr;
    const auto n = static_cast<std::size_t>(end - digits);
    // One resize and straight copies: this runs for every answer.
    const std::size_t at = out.size();
    out.resize(at + 9 + n + 1 + reason.size() + 2);
    char* p = out.data() + at;
    std::memcpy(p, version == 10 ? "HTTP/1.0 " : "HTTP/1.1 ", 9);
    p += 9;
    std::memcpy(p, digits, n);
    p += n;
    *p++ = ' ';
    if (!reason.empty()) std::memcpy(p, reason.data(), reason.size());
    p += reason.size();
    *p++ = '\r';
    *p = '\n';
}

// An answer's status line, with its own reason phrase.
template <class Body, class Fields>
void append_status_line(std::string& out, const boost::beast::http::response<Body, Fields>& res) {
    append_status_line(out, res.version(), res.result_int(), reason_phrase(res.reason(), res.result_int()));
}

// The status line of an answer composed without a reason phrase: the standard one (none for a
// status no one registered).
inline void append_status_line(std::string& out, unsigned version, unsigned status) {
    namespace http = boost::beast::http;
    append_status_line(out, version, status, reason_phrase(http::obsolete_reason(http::int_to_status(status)), status));
}

// The Connection field an answer needs when what happens differs from its version's default
// (what Beast's keep_alive() writes): "close" in HTTP/1.1, "keep-alive" in HTTP/1.0.
inline void append_connection(std::string& out, unsigned version, bool keep_alive) {
    if (version >= 11 && !keep_alive) append_field(out, "Connection", "close");
    if (version < 11 && keep_alive) append_field(out, "Connection", "keep-alive");
}

// "Date: <IMF-fixdate>\r\n" for now (RFC 9110 6.6.1: an answer the gateway makes has one, and
// one relayed without it gets one), formatted once a second per thread.
inline void append_date(std::string& out) {
    thread_local std::chrono::sys_seconds formatted_at{};
    thread_local std::string line;
    const auto now = std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now());
    if (now != formatted_at || line.empty()) {
        formatted_at = now;
        line = "Date: " + routes::format_http_date(now) + "\r\n";
    }
    out += line;
}

// "Name: 123\r\n".
inline void append_field(std::string& out, std::string_view name, std::size_t number) {
    char digits[24];
    const auto end = std::to_chars(digits, digits + sizeof digits, number).ptr;
    append_field(out, name, std::string_view(digits, static_cast<std::size_t>(end - digits)));
}

// "GET /path HTTP/1.1\r\n" + fields + "\r\n".
template <class Body, class Fields>
void append_head(std::string& out, const boost::beast::http::request<Body, Fields>& req) {
    auto m = req.method_string();
    auto t = req.target();
    out.append(m.data(), m.size());
    out += ' ';
    out.append(t.data(), t.size());
    out.append(req.version() == 10 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n", 11);
    append_fields(out, req);
}

// A whole request as two buffers: the head, built here, and the body in place. head must
// outlive the write; so must the request.
template <class Request>
std::array<boost::asio::const_buffer, 2> buffers(std::string& head, const Request& req) {
    head.clear();
    append_head(head, req);
    return {boost::asio::buffer(head), boost::asio::buffer(req.body())};
}

}  // namespace wire
}  // namespace batchgate::gateway
