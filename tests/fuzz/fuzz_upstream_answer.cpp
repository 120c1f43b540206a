// Fuzz target: the bytes an upstream answers with, read the way the upstream pool reads them
// (net/upstream_pool.cpp read_response/on_read: a Beast response_parser with the pool's head
// limit, then net/upstream_pool.hpp's check_answer_head: interim 1xx answers skipped, statuses
// outside 100-599, 101 and bodies under a transfer coding refused; settle_content_length), then
// relayed the way the gateway relays them: the buffered path (gateway/dispatcher.cpp
// passthrough: strip_hop_by_hop, prepare_payload; gateway/http_session.cpp write_head) and the
// streamed one's field filter (gateway/stream_exchange.hpp write_client_head:
// append_crossing_fields). Checks that
// - the client's answer the buffered path writes is one whole message to a client's parser,
//   with the upstream's status and body, no hop-by-hop field and no field the upstream's
//   Connection named, at most one Content-Length line and that one a number, and nothing after
//   it (a framing the client reads differently is a response-splitting bug);
// - the two paths let the same fields cross, in the same order.
// Input: byte 0: bit 0 the request was a HEAD, bits 1-2 the size of each read; the rest is the
// upstream's bytes, the connection closing after them.
#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include "fuzz_common.hpp"
#include "fuzz_http.hpp"
#include "net/hop_by_hop.hpp"
#include "net/upstream_connection.hpp"
#include "net/upstream_pool.hpp"
#include "net/wire.hpp"

using namespace batchgate;
namespace http = boost::beast::http;

namespace {

using field_list = std::vector<std::pair<std::string, std::string>>;

// "Name: value\r\n" lines (as the gateway writes them) back into pairs.
field_list lines_of(std::string_view text) {
    field_list out;
    while (!text.empty()) {
        const auto end = text.find("\r\n");
        fuzz::check(end != std::string_view::npos, "a field line without its CRLF");
        const auto line = text.substr(0, end);
        const auto colon = line.find(": ");
        fuzz::check(colon != std::string_view::npos, "a field line without ': '");
        out.emplace_back(line.substr(0, colon), line.substr(colon + 2));
        text.remove_prefix(end + 2);
    }
    return out;
}

template <class Fields>
field_list fields_of(const Fields& fields) {
    field_list out;
    for (const auto& f : fields) out.emplace_back(f.name_string(), f.value());
    return out;
}

bool iequal(std::string_view a, std::string_view b) { return boost::beast::iequals(a, b); }

// The parse the pool makes: interim answers skipped, the close ending a body that has no
// length. nullopt: the pool calls the answer invalid (502).
std::optional<http::response<http::string_body>> read_answer(std::string_view bytes, std::size_t read_size,
                                                            bool head) {
    fuzz::connection conn(bytes, read_size);
    std::string buffer;
    for (int interim = 0; interim < 8; ++interim) {
        http::response_parser<http::string_body> parser;
        parser.header_limit(gateway::upstream_head_limit);
        parser.body_limit(64 * 1024);
        if (head) parser.skip(true);
        if (!fuzz::parse_until(parser, buffer, conn, [&] { return parser.is_done(); }, true)) return std::nullopt;
        switch (gateway::check_answer_head(parser.get(), head, false).kind) {
            case gateway::answer_head::interim: continue;  // the real answer follows
            case gateway::answer_head::refused: return std::nullopt;
            case gateway::answer_head::final_answer: break;
        }
        gateway::settle_content_length(parser);
        return parser.release();
    }
    return std::nullopt;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    fuzz::input in(data, size);
    const std::uint8_t choice = in.byte();
    const bool head = choice & 1;
    constexpr std::size_t read_sizes[] = {65536, 1, 7, 100};
    auto answer = read_answer(in.rest(), read_sizes[(choice >> 1) % std::size(read_sizes)], head);
    if (!answer) return 0;
    const auto original = *answer;

    // What the streamed path lets cross (its own Server, Content-Length and X-Request-Id aside).
    std::string crossing;
    gateway::append_crossing_fields(crossing, original, [](const auto& f) {
        return f.name() == http::field::server || f.name() == http::field::content_length || gateway::is_request_id(f);
    });

    // The buffered path: the answer the client's connection writes.
    auto& res = *answer;
    gateway::strip_hop_by_hop(res);
    res.version(11);
    if (!head) res.prepare_payload();
    std::string out;
    gateway::wire::append_status_line(out, res);
    for (const auto& f : res)
        if (f.name() != http::field::server && !gateway::is_request_id(f))
            gateway::wire::append_field(out, f.name_string(), f.value());
    gateway::wire::append_field(out, "Server", "batchgate");
    gateway::wire::append_field(out, "X-Request-Id", "fuzz");
    out += "\r\n";
    if (!head) out += res.body();

    // The two filters agree.
    field_list buffered;
    for (auto& [name, value] : fields_of(res))
        if (!iequal(name, "Server") && !iequal(name, "Content-Length") && !iequal(name, "X-Request-Id"))
            buffered.emplace_back(std::move(name), std::move(value));
    fuzz::check(lines_of(crossing) == buffered, "the streamed and the buffered path let different fields cross");

    // A client reads exactly that answer, and nothing after it.
    http::response_parser<http::string_body> client;
    client.header_limit(1 << 20);
    client.body_limit(1 << 20);
    client.eager(true);  // the body too, in the same put
    if (head) client.skip(true);
    boost::beast::error_code ec;
    const std::size_t used = client.put(boost::asio::buffer(out.data(), out.size()), ec);
    fuzz::check(!ec, "the client cannot parse the relayed answer: " + ec.message());
    if (!client.is_done()) {
        // A body as long as the connection (a status with no length, never here) would not end.
        fuzz::fail("the relayed answer is not whole to a client");
    }
    fuzz::check(used == out.size(), "bytes after the relayed answer (a second answer to the client)");
    const auto& got = client.get();
    fuzz::check(got.result_int() == original.result_int(), "the relayed status differs");
    if (!head) fuzz::check(got.body() == original.body(), "the relayed body differs");
    fuzz::check(got.count(http::field::server) == 1 && got.count("X-Request-Id") == 1, "Server or X-Request-Id twice");
    // One length, as digits: "2, 2" is one length to Beast and an ambiguous field to a stricter client.
    fuzz::check(got.count(http::field::content_length) <= 1, "Content-Length twice");
    if (auto it = got.find(http::field::content_length); it != got.end())
        fuzz::check(!it->value().empty() && std::all_of(it->value().begin(), it->value().end(),
                                                        [](char c) { return c >= '0' && c <= '9'; }),
                    "a Content-Length that is not one number: " + std::string(it->value()));
    std::vector<std::string> named;  // what the upstream's Connection fields named
    for (const auto& f : original)
        if (f.name() == http::field::connection)
            for (auto token : http::token_list(f.value())) named.emplace_back(token);
    for (const auto& f : got) {
        fuzz::check(f.name() == http::field::unknown || !gateway::is_hop_by_hop(f.name()),
                    "a hop-by-hop field was relayed: " + std::string(f.name_string()));
        if (f.name() == http::field::content_length || f.name() == http::field::server || gateway::is_request_id(f))
            continue;  // the gateway's own
        for (const auto& n : named)
            fuzz::check(!iequal(n, f.name_string()), "a field the upstream's Connection named was relayed: " + n);
    }
    return 0;
}
