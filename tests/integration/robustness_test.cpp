// Hostile or unusual peers: interim upstream answers, a drain that runs out of time, and
// oversized sub-request headers. Each must still give every caller exactly one answer.
#include <sys/socket.h>

#include <map>
#include <optional>
#include <mutex>
#include <atomic>
#include <thread>

#include "tests/integration/harness.hpp"
#include "tests/integration/kept_alive_client.hpp"

using namespace batchgate::testing;
using batchgate::mock::fault;
using batchgate::mock::mock_upstream;

namespace {

// A raw upstream that answers every request with `reply` verbatim, on keep-alive connections.
// With `second`, a connection's second request gets those bytes and then the connection closes
// ("": unanswered, the upstream that closes an idle connection as the gateway sends on it).
class raw_upstream {
public:
    explicit raw_upstream(std::string reply, std::optional<std::string> second = std::nullopt)
        : reply_(std::move(reply)), second_(std::move(second)), acceptor_(ioc_, {net::ip::make_address("127.0.0.1"), 0}) {
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
    // The value of `name` in the last request's head ("" when absent or no request yet).
    std::string last_field(http::field name) const {
        std::lock_guard lock(mutex_);
        return last_fields_.contains(name) ? last_fields_.at(name) : std::string();
    }

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
                for (int n = 1;; ++n) {
                    http::request<http::string_body> req;
                    beast::error_code rec;
                    http::read(s, buf, req, rec);
                    if (rec) return;
                    {
                        std::lock_guard lock(mutex_);
                        last_fields_.clear();
                        for (const auto& f : req) last_fields_[f.name()] = std::string(f.value());
                    }
                    ++requests_;
                    if (second_ && n == 2) {
                        net::write(s, net::buffer(*second_), rec);
                        return;
                    }
                    net::write(s, net::buffer(reply_), rec);
                    if (rec) return;
                }
            });
        }
    }
    std::string reply_;
    std::optional<std::string> second_;
    net::io_context ioc_;
    tcp::acceptor acceptor_;
    std::thread thread_;
    std::vector<std::thread> conns_;  // joined by the destructor (after thread_, which adds to it)
    mutable std::mutex mutex_;
    std::map<http::field, std::string> last_fields_;  // of the last request
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

const char* coalesce_yaml = R"(
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
worker_threads: 2
limits: {drain_timeout: 200ms}
upstreams:
  api: {url: "http://127.0.0.1:{{PORT}}", request_timeout: {{TIMEOUT}}}
routes:
  - name: users
    match: {method: GET, path: "/users/{id}"}
    upstream: api
    mode: coalesce
    coalesce:
      key: {path: id}
      max_wait: {{WAIT}}
      retry: {{RETRY}}
      request: {method: GET, path: /users, encoding: query_list, query_param: ids}
      response: {items: "", key: /id}
  - name: fan
    match: {method: POST, path: /fan}
    upstream: api
    mode: fan_out
    fan_out:
      items: /ids
      request: {method: GET, path: "/users/{item}"}
  - {name: batch, match: {method: POST, path: "/$batch"}, mode: batch_envelope}
  - {name: all, match: {prefix: /}, upstream: api}
)";

// The config above, in front of the upstream on `port`.
std::shared_ptr<const batchgate::config::gateway_config> coalesce_config(unsigned short port, const std::string& wait,
                                                                         const std::string& timeout = "2s",
                                                                         const std::string& retry = "{}") {
    return load_yaml(
        fill(coalesce_yaml, {{"PORT", std::to_string(port)}, {"WAIT", wait}, {"TIMEOUT", timeout}, {"RETRY", retry}}));
}

std::string http_answer(const std::string& status_line, const std::string& fields, const std::string& body) {
    return "HTTP/1.1 " + status_line + "\r\n" + fields + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

}  // namespace

// A refused batch's answer goes to its callers as it came: the upstream's body with the
// upstream's own Content-Type, not the gateway's application/json (RFC 9110 8.3).
// The harness itself: a server that takes the request and never answers fails the client's
// read after its limit (a timeout error), for one request (send_request), a kept-alive
// connection and raw bytes (send_raw ends after 2 s of silence), instead of hanging until
// ctest's timeout (Asio's synchronous reads wait without end once SO_RCVTIMEO's recv timed out).
TEST(Harness, AnAnswerThatNeverComesEndsTheReadAfterItsLimit) {
    net::io_context server_ioc;
    tcp::acceptor acceptor(server_ioc, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
    const auto port = acceptor.local_endpoint().port();
    std::vector<tcp::socket> held;  // accepted and never answered, open until the test ends
    std::thread server([&] {
        for (int i = 0; i < 2; ++i) held.push_back(acceptor.accept());
    });
    kept_alive_client client(port, 1);
    try {
        client.get("/never");
        ADD_FAILURE() << "an answer came from a server that sends none";
    } catch (const beast::system_error& e) {
        EXPECT_EQ(e.code(), net::error::timed_out) << e.what();
    }
    EXPECT_EQ(send_raw(port, "GET /never HTTP/1.1\r\nHost: t\r\n\r\n"), "");
    server.join();
}

TEST(Robustness, ARefusedBatchKeepsTheUpstreamsContentType) {
    raw_upstream up(http_answer("400 Bad Request", "Content-Type: text/html\r\nContent-Language: en\r\n", "<b>bad ids</b>"));
    for (const char* wait : {"1ms", "150ms"}) {  // a lone caller (its own refusal); several (the whole batch's)
        running_gateway gw(coalesce_config(up.port(), wait));
        auto rs = concurrently(std::string(wait) == "1ms" ? 1 : 3, [&](int i) { return get(gw.port(), "/users/" + std::to_string(i + 1)); });
        for (const auto& r : rs) {
            EXPECT_EQ(r.status, 400) << wait << ": " << r.body;
            EXPECT_EQ(r.body, "<b>bad ids</b>") << wait;
            EXPECT_EQ(r.header("content-type"), "text/html") << wait;
        }
    }
    raw_upstream bare("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic\r\nWWW-Authenticate: Bearer\r\n"
                      "Content-Encoding: gzip\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\nno");
    running_gateway gw(coalesce_config(bare.port(), "1ms"));
    auto r = get(gw.port(), "/users/1");
    EXPECT_EQ(r.status, 401) << r.body;
    EXPECT_EQ(r.body, "no");
    EXPECT_FALSE(r.headers.contains("content-type")) << "the upstream said nothing about its body's type";
    // Every line of each field, in order (a second challenge; a body coded twice).
    const auto raw = send_raw(gw.port(), "GET /users/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    const auto basic = raw.find("WWW-Authenticate: Basic\r\n"), bearer = raw.find("WWW-Authenticate: Bearer\r\n");
    EXPECT_TRUE(basic != std::string::npos && bearer != std::string::npos && basic < bearer) << raw;
    const auto gzip = raw.find("Content-Encoding: gzip\r\n"), br = raw.find("Content-Encoding: br\r\n");
    EXPECT_TRUE(gzip != std::string::npos && br != std::string::npos && gzip < br) << raw;
}

// retry.statuses may list a 2xx (a 202 "not ready yet", say); when its retries run out the
// answer is split like any other 2xx: the whole batch's answer never goes to every caller.
TEST(Robustness, A2xxWhoseRetriesRanOutIsSplit) {
    raw_upstream up(http_answer("202 Accepted", "Content-Type: application/json\r\n", R"([{"id":"1"},{"id":"2"}])"));
    running_gateway gw(coalesce_config(up.port(), "100ms", "2s", "{statuses: [202], max_attempts: 1}"));
    auto rs = concurrently(2, [&](int i) { return get(gw.port(), "/users/" + std::to_string(i + 1)); });
    for (int i = 0; i < 2; ++i) {
        EXPECT_EQ(rs[i].status, 200) << rs[i].body;
        EXPECT_EQ(rs[i].body, R"({"id":")" + std::to_string(i + 1) + R"("})");
    }
}

// The gateway reads batch answers and fan-out items itself: it asks for them unencoded, and one
// that comes encoded anyway is a clear 502, not "not valid JSON" nor a body taken as plain.
TEST(Robustness, AnswersTheGatewayReadsAreAskedForUnencoded) {
    raw_upstream up(http_answer("200 OK", "Content-Type: application/json\r\nContent-Encoding: gzip\r\n",
                                R"([{"id":"1"},{"id":"2"}])"));
    running_gateway gw(coalesce_config(up.port(), "1ms"));
    auto r = get(gw.port(), "/users/1");
    EXPECT_EQ(up.last_field(http::field::accept_encoding), "identity");
    EXPECT_EQ(r.status, 502) << r.body;
    EXPECT_EQ(r.json()["error"], "upstream_bad_response") << r.body;
    EXPECT_NE(r.body.find("Content-Encoding \\\"gzip\\\""), std::string::npos) << r.body;

    auto fan = send_request(gw.port(), "POST", "/fan", R"({"ids":["1"]})", {{"Content-Type", "application/json"}});
    EXPECT_EQ(up.last_field(http::field::accept_encoding), "identity");
    ASSERT_EQ(fan.status, 200) << fan.body;  // per-item statuses
    EXPECT_EQ(fan.json()["results"][0]["status"], 502) << fan.body;
    EXPECT_NE(fan.body.find("Content-Encoding"), std::string::npos) << fan.body;

    // A $batch entry's answer is embedded in the envelope's JSON, whatever coding the entry asks.
    nlohmann::json envelope{{"requests", {{{"id", "a"}, {"method", "GET"}, {"url", "/other"}, {"headers", {{"Accept-Encoding", "gzip"}}}}}}};
    auto batch = send_request(gw.port(), "POST", "/$batch", envelope.dump(), {{"Content-Type", "application/json"}});
    EXPECT_EQ(batch.status, 200) << batch.body;
    EXPECT_EQ(up.last_field(http::field::accept_encoding), "identity");

    // Every line counts: identity first, gzip after, is a coded body.
    raw_upstream twice(http_answer("200 OK", "Content-Encoding: identity\r\nContent-Encoding: gzip\r\n", R"([{"id":"1"}])"));
    running_gateway gw3(coalesce_config(twice.port(), "1ms"));
    auto coded = get(gw3.port(), "/users/1");
    EXPECT_EQ(coded.status, 502) << coded.body;
    EXPECT_NE(coded.body.find("identity, gzip"), std::string::npos) << coded.body;

    raw_upstream plain(http_answer("200 OK", "Content-Type: application/json\r\nContent-Encoding: identity\r\n",
                                   R"([{"id":"1","n":1}])"));
    running_gateway gw2(coalesce_config(plain.port(), "1ms"));
    auto ok = get(gw2.port(), "/users/1");
    EXPECT_EQ(ok.status, 200) << ok.body;
    EXPECT_EQ(ok.body, R"({"id":"1","n":1})");
}

// A transfer coding other than chunked ("gzip, chunked") is hop-by-hop, never relayed, and the
// gateway decodes none: relayed as it came, the de-chunked gzip reached the client as a plain
// body labelled chunked, and fan-out and $batch embedded it as a 200 item. Now a 502 on every
// path; an answer chunked only still passes.
TEST(Robustness, ATransferCodingBeyondChunkedIsABadAnswer) {
    const std::string body = R"([{"id":"1"}])";
    const std::string chunks = "c\r\n" + body + "\r\n0\r\n\r\n";  // 12 bytes
    for (const char* te : {"Transfer-Encoding: gzip, chunked\r\n", "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"}) {
        raw_upstream up(std::string("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n") + te + "\r\n" + chunks);
        running_gateway gw(coalesce_config(up.port(), "1ms"));
        auto passed = get(gw.port(), "/other");
        EXPECT_EQ(passed.status, 502) << te << passed.body;
        EXPECT_NE(passed.body.find("Transfer-Encoding \\\"gzip"), std::string::npos) << passed.body;
        auto coalesced = get(gw.port(), "/users/1");
        EXPECT_EQ(coalesced.status, 502) << te << coalesced.body;
        auto fan = send_request(gw.port(), "POST", "/fan", R"({"ids":["1"]})", {{"Content-Type", "application/json"}});
        ASSERT_EQ(fan.status, 200) << fan.body;
        EXPECT_EQ(fan.json()["results"][0]["status"], 502) << fan.body;
        nlohmann::json envelope{{"requests", {{{"id", "a"}, {"method", "GET"}, {"url", "/other"}}}}};
        auto batch = send_request(gw.port(), "POST", "/$batch", envelope.dump(), {{"Content-Type", "application/json"}});
        ASSERT_EQ(batch.status, 200) << batch.body;
        EXPECT_EQ(batch.json()["responses"][0]["status"], 502) << batch.body;
    }
    raw_upstream chunked("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks);
    running_gateway gw(coalesce_config(chunked.port(), "1ms"));
    EXPECT_EQ(get(gw.port(), "/other").body, body);
    EXPECT_EQ(get(gw.port(), "/users/1").body, R"({"id":"1"})");
}

// An upstream answer whose chunk-size line (its extensions) or trailer section never ends is
// refused once it passes what a connection's read buffer holds (128 KiB): Beast waits for each
// whole in the buffer, which grew with every byte the upstream sent (gigabytes, found by a
// hostile upstream), and the callers waited for the request timeout (here 30 s: a 504).
TEST(Robustness, AnEndlessChunkLineOrTrailerFromTheUpstreamIsABadAnswer) {
    const std::string head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    const std::string endless(300 * 1024, 'x');
    const std::string body = R"([{"id":"1"}])";
    {
        raw_upstream up(head + "c;e=" + endless);
        running_gateway gw(coalesce_config(up.port(), "1ms", "30s"));
        auto passed = get(gw.port(), "/other");
        EXPECT_EQ(passed.status, 502) << passed.body;
        EXPECT_NE(passed.body.find("buffer overflow"), std::string::npos) << passed.body;
        auto coalesced = get(gw.port(), "/users/1");
        EXPECT_EQ(coalesced.status, 502) << coalesced.body;
    }
    {
        raw_upstream up(head + "c\r\n" + body + "\r\n0\r\nX-Trailer: " + endless);
        running_gateway gw(coalesce_config(up.port(), "1ms", "30s"));
        auto coalesced = get(gw.port(), "/users/1");
        EXPECT_EQ(coalesced.status, 502) << coalesced.body;
        EXPECT_NE(coalesced.body.find("buffer overflow"), std::string::npos) << coalesced.body;
        // Passthrough relays the head and the first chunk as they come: then the client's
        // connection is closed where the trailers would be (no complete answer: status 0).
        auto passed = get(gw.port(), "/other");
        EXPECT_EQ(passed.status, 0) << passed.body;
        auto fan = send_request(gw.port(), "POST", "/fan", R"({"ids":["1"]})", {{"Content-Type", "application/json"}});
        ASSERT_EQ(fan.status, 200) << fan.body;
        EXPECT_EQ(fan.json()["results"][0]["status"], 502) << fan.body;
    }
}

// A passthrough answer's Content-Length is the one the gateway read: "2, 2" (one length to
// Beast, RFC 9110 8.6 lets a recipient take it) goes out as "2", and a 204's (which has no
// content, and must not say a length) not at all. Both were relayed as they came.
TEST(Robustness, APassedAnswersContentLengthIsOneNumber) {
    raw_upstream listed("HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok");
    running_gateway gw(coalesce_config(listed.port(), "1ms"));
    auto raw = send_raw(gw.port(), "GET /other HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    EXPECT_NE(raw.find("\r\nContent-Length: 2\r\n"), std::string::npos) << raw;
    EXPECT_EQ(raw.find("2, 2"), std::string::npos) << raw;
    EXPECT_EQ(raw.substr(raw.size() - 2), "ok") << raw;

    raw_upstream empty("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-Kept: yes\r\n\r\n");
    running_gateway gw2(coalesce_config(empty.port(), "1ms"));
    raw = send_raw(gw2.port(), "GET /other HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    EXPECT_EQ(raw.rfind("HTTP/1.1 204", 0), 0u) << raw;
    EXPECT_EQ(raw.find("Content-Length"), std::string::npos) << raw;
    EXPECT_NE(raw.find("X-Kept: yes\r\n"), std::string::npos) << raw;
}

// The same on the buffered path (a caller a coalesce route sends on alone, here a shadow route's):
// a 304 keeps the upstream's Content-Length, the length a GET would get (RFC 9110 8.6), and a
// 204 says none; Beast's prepare_payload gave both "Content-Length: 0". Two requests pipelined on
// one connection show the framing: a client that counted a body would lose the second answer.
TEST(Robustness, ABufferedPassed304KeepsItsLengthAndA204SaysNone) {
    auto shadowed = [](unsigned short port) {
        auto text = fill(coalesce_yaml, {{"PORT", std::to_string(port)}, {"WAIT", "1ms"}, {"TIMEOUT", "2s"}, {"RETRY", "{}"}});
        text.replace(text.find("      max_wait:"), 0, "      shadow: true\n");
        return load_yaml(text);
    };
    const std::string two = "GET /users/7 HTTP/1.1\r\nHost: a\r\nIf-None-Match: \"v1\"\r\n\r\n"
                            "GET /users/7 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    raw_upstream unchanged("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 1234\r\n\r\n");
    running_gateway gw(shadowed(unchanged.port()));
    auto raw = send_raw(gw.port(), two);
    ASSERT_EQ(raw.rfind("HTTP/1.1 304", 0), 0u) << raw;
    EXPECT_NE(raw.find("HTTP/1.1 304", 1), std::string::npos) << "the second answer is lost: " << raw;
    EXPECT_NE(raw.find("\r\nContent-Length: 1234\r\n"), std::string::npos) << raw;
    EXPECT_EQ(raw.find("Content-Length: 0"), std::string::npos) << raw;

    raw_upstream empty("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-Kept: yes\r\n\r\n");
    running_gateway gw2(shadowed(empty.port()));
    raw = send_raw(gw2.port(), two);
    ASSERT_EQ(raw.rfind("HTTP/1.1 204", 0), 0u) << raw;
    EXPECT_NE(raw.find("HTTP/1.1 204", 1), std::string::npos) << "the second answer is lost: " << raw;
    EXPECT_EQ(raw.find("Content-Length"), std::string::npos) << raw;
    EXPECT_NE(raw.find("X-Kept: yes\r\n"), std::string::npos) << raw;
}

// Every answer has one Date (RFC 9110 6.6.1): the gateway's own on what it makes (a coalesced
// caller's share, its errors) and on a relayed answer that came without one (or whose Connection
// names it); a relayed answer's own Date goes on as it came, streamed or buffered (a shadow
// route's caller).
TEST(Robustness, EveryAnswerHasOneDate) {
    auto dates = [](const std::string& raw) {
        std::vector<std::string> found;
        const auto head_end = raw.find("\r\n\r\n");
        for (auto at = raw.find("\r\nDate: "); at != std::string::npos && at < head_end; at = raw.find("\r\nDate: ", at + 2))
            found.push_back(raw.substr(at + 8, raw.find("\r\n", at + 2) - at - 8));
        return found;
    };
    auto is_imf_fixdate = [](const std::string& d) {  // "Sun, 06 Nov 1994 08:49:37 GMT"
        return d.size() == 29 && d[3] == ',' && d.substr(26) == "GMT" && d[19] == ':' && d[22] == ':';
    };
    const std::string get_user = "GET /users/7 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    const std::string get_other = "GET /other HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    {
        raw_upstream undated(http_answer("200 OK", "Content-Type: application/json\r\n", R"([{"id":"7"}])"));
        running_gateway gw(coalesce_config(undated.port(), "1ms"));
        for (const auto& request : {get_user, get_other, std::string("GET /nowhere/x HTTP/1.1\r\nConnection: close\r\n\r\n")}) {
            auto raw = send_raw(gw.port(), request);
            auto found = dates(raw);
            ASSERT_EQ(found.size(), 1u) << raw;
            EXPECT_TRUE(is_imf_fixdate(found[0])) << found[0];
        }
    }
    const std::string theirs = "Tue, 15 Nov 1994 08:12:31 GMT";
    raw_upstream dated(http_answer("200 OK", "Date: " + theirs + "\r\nContent-Type: application/json\r\n", R"([{"id":"7"}])"));
    running_gateway gw(coalesce_config(dated.port(), "1ms"));
    auto raw = send_raw(gw.port(), get_other);
    EXPECT_EQ(dates(raw), std::vector<std::string>{theirs}) << "streamed: " << raw;
    {  // a Date the upstream's Connection names is its hop's own: dropped, and the gateway's given
        raw_upstream named(http_answer("200 OK", "Connection: Date\r\nDate: " + theirs + "\r\n", "ok"));
        running_gateway gw3(coalesce_config(named.port(), "1ms"));
        raw = send_raw(gw3.port(), get_other);
        auto found = dates(raw);
        ASSERT_EQ(found.size(), 1u) << raw;
        EXPECT_NE(found[0], theirs) << raw;
    }
    auto text = fill(coalesce_yaml, {{"PORT", std::to_string(dated.port())}, {"WAIT", "1ms"}, {"TIMEOUT", "2s"}, {"RETRY", "{}"}});
    text.replace(text.find("      max_wait:"), 0, "      shadow: true\n");
    running_gateway shadowed(load_yaml(text));
    raw = send_raw(shadowed.port(), get_user);
    EXPECT_EQ(dates(raw), std::vector<std::string>{theirs}) << "buffered: " << raw;
}

// limits.max_buffered bounds what a fan-out or $batch call holds of its items' answers until
// its own answer goes out, not only each answer while it is read: one at a time, four answers
// of 30 KB fit a 100 KiB budget as they are read, not all together. An item over it is a 502
// (answer_over_budget) in its place; the rest are kept, and everything goes back once the answer is written.
TEST(Robustness, FanOutAndBatchAnswersAreHeldWithinTheBudget) {
    const std::string big(30000, 'x');
    raw_upstream up(http_answer("200 OK", "Content-Type: text/plain\r\n", big));
    auto text = fill(coalesce_yaml, {{"PORT", std::to_string(up.port())}, {"WAIT", "1ms"}, {"TIMEOUT", "2s"}, {"RETRY", "{}"}});
    auto swap = [&text](const std::string& from, const std::string& to) { text.replace(text.find(from), from.size(), to); };
    swap("limits: {drain_timeout: 200ms}", "limits: {drain_timeout: 200ms, max_buffered: 100KiB}");
    swap("mode: batch_envelope}", "mode: batch_envelope, batch_envelope: {concurrency: 1}}");
    running_gateway gw(load_yaml(text));
    nlohmann::json envelope{{"requests", nlohmann::json::array()}};
    for (int i = 0; i < 4; ++i) envelope["requests"].push_back({{"id", std::to_string(i)}, {"method", "GET"}, {"url", "/other"}});
    auto batch = send_request(gw.port(), "POST", "/$batch", envelope.dump(), {{"Content-Type", "application/json"}});
    ASSERT_EQ(batch.status, 200) << batch.body.substr(0, 300);
    const auto responses = batch.json()["responses"];
    ASSERT_EQ(responses.size(), 4u);
    int held = 0, refused = 0;
    for (const auto& r : responses) {
        if (r["status"] == 200) {
            ++held;
            EXPECT_EQ(r["body"], big);
        } else {
            ++refused;
            // Sent, so it may have taken effect: a 502 without Retry-After, not a 503.
            EXPECT_EQ(r["status"], 502) << r.dump().substr(0, 300);
            EXPECT_EQ(r["body"]["error"], "answer_over_budget") << r.dump().substr(0, 300);
            EXPECT_FALSE(r["headers"].contains("Retry-After")) << r.dump().substr(0, 300);
        }
    }
    EXPECT_EQ(held, 3);
    EXPECT_EQ(refused, 1);
    for (int i = 0; i < 100 && gw.metric("batchgate_buffered_bytes") > 0; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_EQ(gw.metric("batchgate_buffered_bytes"), 0) << "the held answers were not given back";
}

// Once a request went upstream, an answer the budget cannot hold is a 502 (answer_over_budget)
// without Retry-After: the request may have taken effect, and a 503 with Retry-After: 1 invited
// the client to apply a write again (found by a hostile-upstream helper). Batch call, buffered and
// streamed passthrough alike; the upstream saw each request once.
TEST(Robustness, AnAnswerTheBudgetCannotHoldAfterTheRequestWentOutIsA502WithoutRetryAfter) {
    raw_upstream up("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n" +
                    std::string(100000, ' '));
    running_gateway gw(load_yaml(fill(keyed_users_yaml, {{"PORT", std::to_string(up.port())}, {"METHOD", "GET"},
                                                          {"KEEP_ALIVE", "true"}}) +
                                 "limits: {max_buffered: 16KiB}\n"));
    const std::pair<const char*, std::map<std::string, std::string>> calls[] = {
        {"/users/7", {{"X-Id", "7"}}},  // a batch call
        {"/users/7", {}},               // buffered passthrough
        {"/other", {}},                 // streamed passthrough
    };
    for (const auto& [target, headers] : calls) {
        const auto r = get(gw.port(), target, headers);
        EXPECT_EQ(r.status, 502) << target << ": " << r.body;
        EXPECT_NE(r.body.find("\"answer_over_budget\""), std::string::npos) << target << ": " << r.body;
        EXPECT_NE(r.body.find("may have taken effect"), std::string::npos) << target << ": " << r.body;
        EXPECT_EQ(r.headers.count("retry-after"), 0u) << target;
    }
    EXPECT_EQ(up.requests(), 3);
}

// A $batch entry's own Host is checked as a client's Host is: "a b" is a 400 in its entry, not
// an X-Forwarded-Host upstream; the entries beside it go on.
TEST(Robustness, ABatchEntrysInvalidHostIsRefusedInItsEntry) {
    raw_upstream up(http_answer("200 OK", "Content-Type: application/json\r\n", R"({"ok":true})"));
    running_gateway gw(coalesce_config(up.port(), "1ms"));
    nlohmann::json envelope{{"requests",
                             {{{"id", "bad"}, {"method", "GET"}, {"url", "/other"}, {"headers", {{"Host", "a b"}}}},
                              {{"id", "good"}, {"method", "GET"}, {"url", "/other"}, {"headers", {{"Host", "api.example:8080"}}}}}}};
    auto batch = send_request(gw.port(), "POST", "/$batch", envelope.dump(), {{"Content-Type", "application/json"}});
    ASSERT_EQ(batch.status, 200) << batch.body;
    const auto responses = batch.json()["responses"];
    ASSERT_EQ(responses.size(), 2u);
    EXPECT_EQ(responses[0]["id"], "bad");
    EXPECT_EQ(responses[0]["status"], 400) << batch.body;
    EXPECT_EQ(responses[1]["status"], 200) << batch.body;
    EXPECT_EQ(up.requests(), 1) << "the refused entry went upstream";
}

// A passthrough client that half-closes in the middle of its body gets the 400 a buffered route
// gives (it got its connection closed without a word), whether the body had begun to go upstream
// or not; nothing is answered twice.
TEST(Robustness, APassthroughBodyCutByAHalfCloseGets400) {
    raw_upstream up(http_answer("200 OK", "", "ok"));
    running_gateway gw(coalesce_config(up.port(), "1ms"));
    const std::string big(100000, 'x');  // past the first window: the upstream call has begun
    for (const std::string& head_and_part :
         {std::string("POST /other HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc"),
          std::string("POST /other HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"),
          "POST /other HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n\r\n" + big}) {
        net::io_context ioc;
        tcp::socket s(ioc);
        s.connect({net::ip::make_address("127.0.0.1"), gw.port()});
        net::write(s, net::buffer(head_and_part));
        s.shutdown(tcp::socket::shutdown_send);
        std::string answer;
        beast::error_code ec;
        std::array<char, 4096> buf;
        for (std::size_t n; (n = s.read_some(net::buffer(buf), ec)) > 0 || !ec;) answer.append(buf.data(), n);
        EXPECT_EQ(answer.rfind("HTTP/1.1 400", 0), 0u) << head_and_part.substr(0, 60) << ": " << answer;
        EXPECT_EQ(answer.find("HTTP/1.1", 1), std::string::npos) << answer;
    }
}

// A kept-alive connection the upstream closes as a batch call goes on it: a batch of reads is
// sent again on a new connection, even as a POST; a batch of writes is not, even as a PUT (it
// may have been applied, and its callers' POSTs are not idempotent), and its callers learn that
// the connection dropped.
TEST(Robustness, ABatchOfReadsIsSentAgainWhenItsReusedConnectionWasClosed) {
    raw_upstream up(http_answer("200 OK", "Content-Type: application/json\r\n", R"({"results":[{"id":"1"},{"id":"2"}]})"),
                    "");
    running_gateway gw(load_yaml(fill(R"(
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
worker_threads: 1
upstreams:
  api: {url: "http://127.0.0.1:{{PORT}}", request_timeout: 2s}
routes:
  - name: reads
    match: {method: GET, path: "/users/{id}"}
    upstream: api
    mode: coalesce
    coalesce:
      key: {path: id}
      max_wait: 1ms
      request: {method: POST, path: /users/batch, encoding: json_body, body: {ids: "{items}"}}
      response: {items: /results, key: /id}
  - name: writes
    match: {method: POST, path: "/users/{id}"}
    upstream: api
    mode: coalesce
    coalesce:
      key: {path: id}
      max_wait: 1ms
      request: {method: PUT, path: /users/batch, encoding: json_body, body: {ids: "{items}"}}
      response: {items: /results, key: /id}
)",
                                      {{"PORT", std::to_string(up.port())}})),
                       exact_threads);  // one shard: idle connections are per shard, and both routes must share one
    ASSERT_EQ(get(gw.port(), "/users/1").status, 200);
    auto again = get(gw.port(), "/users/2");  // on the kept connection, which the upstream drops
    EXPECT_EQ(again.status, 200) << again.body;
    EXPECT_EQ(again.body, R"({"id":"2"})");
    EXPECT_EQ(up.requests(), 3);

    // The new connection carried one call: the next one on it is dropped too.
    auto write = send_request(gw.port(), "POST", "/users/2", "");
    EXPECT_EQ(write.status, 502) << write.body;
    EXPECT_EQ(write.json()["error"], "upstream_unreachable") << write.body;
    EXPECT_EQ(up.requests(), 4) << "a batch of writes went again";
}

// Part of a status line came back before the close: the upstream had started to answer, so the
// batch is not sent again, even a batch of reads.
TEST(Robustness, ABatchWhoseAnswerHadBegunIsNotSentAgain) {
    raw_upstream up(http_answer("200 OK", "Content-Type: application/json\r\n", R"([{"id":"1"},{"id":"2"}])"), "HTTP/1.1 2");
    running_gateway gw(coalesce_config(up.port(), "1ms"));
    ASSERT_EQ(get(gw.port(), "/users/1").status, 200);
    auto cut = get(gw.port(), "/users/2");
    EXPECT_EQ(cut.status, 502) << cut.body;
    EXPECT_EQ(up.requests(), 2);
}

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
    running_gateway gw(
        coalesce_config(up.port(), "1ms", "30s"));
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
