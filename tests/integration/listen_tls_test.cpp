// listen_tls: the traffic listener speaks TLS. Real TLS clients (curl with --cacert, and a
// Beast ssl_stream) reach coalesce and passthrough routes; a client that does not speak TLS is
// dropped and counted; a reload brings a new certificate to new connections while open ones
// keep theirs.
#include <boost/asio/ssl.hpp>
#include <boost/beast/ssl.hpp>

#include <cstdio>
#include <functional>

#include "tests/integration/examples.hpp"  // eventually
#include "tests/integration/harness.hpp"
#include "tests/test_certs.hpp"

using namespace batchgate::testing;
using batchgate::mock::mock_upstream;
namespace ssl = boost::asio::ssl;

namespace {

const char* yaml = R"(
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
worker_threads: 2
logging: {level: error, access_log: false}
listen_tls: {cert_chain: "{{CERT}}", key: "{{KEY}}"}
upstreams:
  plain: {url: "http://127.0.0.1:{{PORT}}"}
routes:
  - name: users
    match: {method: GET, path: "/users/{id}"}
    upstream: plain
    mode: coalesce
    coalesce:
      key: {path: id}
      max_wait: 20ms
      request: {method: GET, path: /users, encoding: query_list, query_param: ids}
      response: {items: "", key: /id}
  - name: fan
    match: {method: POST, path: /fan}
    upstream: plain
    mode: fan_out
    fan_out: {items: /ids, request: {method: GET, path: "/echo/{item}"}}
  - {name: batch, match: {method: POST, path: "/$batch"}, mode: batch_envelope}
  - name: everything
    match: {prefix: /}
    upstream: plain
)";

struct tls_files {
    explicit tls_files(const std::string& tag) : pem(make_certificate()) {
        cert = write_temp(tag + "-cert.pem", pem.cert);
        key = write_temp(tag + "-key.pem", pem.key);
    }
    pem_pair pem;
    std::string cert, key;
};

std::shared_ptr<const batchgate::config::gateway_config> config_for(unsigned short port, const tls_files& f) {
    return load_yaml(fill(yaml, {{"PORT", std::to_string(port)}, {"CERT", f.cert}, {"KEY", f.key}}));
}

// Runs a command, returns its stdout.
std::string run(const std::string& command) {
    std::string out;
    FILE* p = ::popen(command.c_str(), "r");
    if (!p) return out;
    char buf[4096];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
    ::pclose(p);
    return out;
}

// A TLS client that trusts only ca_pem and checks the name 127.0.0.1.
class tls_client {
public:
    tls_client(unsigned short port, const std::string& ca_pem) : ctx_(ssl::context::tls_client), stream_(ioc_, ctx_) {
        ctx_.add_certificate_authority(net::buffer(ca_pem));
        stream_.set_verify_mode(ssl::verify_peer);  // on the stream: its SSL object exists already
        stream_.set_verify_callback(ssl::host_name_verification("127.0.0.1"));
        beast::get_lowest_layer(stream_).connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
        beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(10));
        stream_.handshake(ssl::stream_base::client, handshake_error);
    }
    beast::error_code handshake_error;

    response get(const std::string& target) {
        response out;
        http::request<http::string_body> req{http::verb::get, target, 11};
        req.set(http::field::host, "gateway.test");
        beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(10));
        beast::error_code ec;
        http::write(stream_, req, ec);
        if (ec) return out;
        http::response<http::string_body> res;
        http::read(stream_, buffer_, res, ec);
        if (ec) return out;
        out.status = res.result_int();
        out.body = res.body();
        return out;
    }

    // Sends a request's bytes as they are.
    void send(const std::string& bytes) {
        beast::error_code ec;
        net::write(stream_, net::buffer(bytes), ec);
    }

    // Everything decrypted until the connection ends, and how it ended (beast::error::timeout
    // after 20 s without a byte: the stream's timeouts hold for its asynchronous reads only).
    std::string read_until_closed(beast::error_code& ended) {
        std::string raw;
        char buf[16384];
        std::function<void()> next = [&] {
            beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(20));
            stream_.async_read_some(net::buffer(buf), [&](beast::error_code ec, std::size_t n) {
                if (ec) {
                    ended = ec;
                    return;
                }
                raw.append(buf, n);
                next();
            });
        };
        next();
        ioc_.restart();
        ioc_.run();
        return raw;
    }

    // Hangs up without TLS's close_notify, as many clients do.
    void close_tcp() {
        beast::error_code ignored;
        beast::get_lowest_layer(stream_).socket().close(ignored);
    }

private:
    net::io_context ioc_;
    ssl::context ctx_;
    beast::ssl_stream<beast::tcp_stream> stream_;
    beast::flat_buffer buffer_;
};

class ListenTls : public ::testing::Test {
protected:
    mock_upstream up;
    tls_files files{"listen"};
    std::string ca = write_temp("listen-ca.pem", files.pem.cert);
};

}  // namespace

TEST_F(ListenTls, CurlReachesCoalesceAndPassthroughRoutes) {
    running_gateway gw(config_for(up.port(), files));
    const std::string base = "curl -sS --max-time 10 --cacert " + ca + " -w '\\n%{http_code}' https://127.0.0.1:" +
                             std::to_string(gw.port());
    const std::string user = run(base + "/users/7");
    ASSERT_EQ(user.substr(user.rfind('\n') + 1), "200") << user;
    EXPECT_EQ(nlohmann::json::parse(user.substr(0, user.rfind('\n')))["id"], "7") << user;

    const std::string echo = run(base + "/echo/x -H 'Content-Type: application/json' --data-binary '{\"a\":1}'");
    ASSERT_EQ(echo.substr(echo.rfind('\n') + 1), "200") << echo;
    const auto body = nlohmann::json::parse(echo.substr(0, echo.rfind('\n')));
    EXPECT_EQ(body["body"], R"({"a":1})");
    EXPECT_EQ(body["headers"]["x-forwarded-proto"], "https") << body.dump();
    // Fan-out item calls and $batch sub-requests say so too (they said http).
    const std::string fan = run(base + "/fan -H 'Content-Type: application/json' --data-binary '{\"ids\":[\"a\"]}'");
    ASSERT_EQ(fan.substr(fan.rfind('\n') + 1), "200") << fan;
    EXPECT_NE(fan.find(R"("x-forwarded-proto":"https")"), std::string::npos) << fan;
    const std::string batch = run(base + "/\\$batch -H 'Content-Type: application/json' --data-binary "
                                         "'{\"requests\":[{\"id\":\"1\",\"method\":\"GET\",\"url\":\"/echo/b\"}]}'");
    ASSERT_EQ(batch.substr(batch.rfind('\n') + 1), "200") << batch;
    EXPECT_NE(batch.find(R"("x-forwarded-proto":"https")"), std::string::npos) << batch;

    // Without the CA, curl refuses the certificate: the gateway really presented this one.
    const std::string untrusted = run("curl -sS --max-time 10 -o /dev/null -w '%{http_code}' https://127.0.0.1:" +
                                      std::to_string(gw.port()) + "/echo/x 2>/dev/null");
    EXPECT_EQ(untrusted, "000");
}

TEST_F(ListenTls, ConcurrentTlsCallersStillShareBatchCalls) {
    running_gateway gw(config_for(up.port(), files));
    auto results = concurrently(20, [&](int i) {
        tls_client c(gw.port(), files.pem.cert);
        EXPECT_FALSE(c.handshake_error) << c.handshake_error.message();
        return c.get("/users/" + std::to_string(i + 1));
    });
    for (int i = 0; i < 20; ++i) {
        ASSERT_EQ(results[i].status, 200) << results[i].body;
        EXPECT_EQ(results[i].json()["id"], std::to_string(i + 1));
    }
    EXPECT_LT(up.count("GET", "/users"), 20u) << "TLS callers were not batched";
}

TEST_F(ListenTls, APlainHttpClientIsDroppedAndCounted) {
    running_gateway gw(config_for(up.port(), files));
    const std::string got = send_raw(gw.port(), "GET /echo/x HTTP/1.1\r\nHost: t\r\n\r\n");
    EXPECT_EQ(got.find("HTTP/1.1 200"), std::string::npos) << got;
    for (int i = 0; i < 200 && gw.metric("batchgate_tls_handshake_failures_total") < 1; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    EXPECT_EQ(gw.metric("batchgate_tls_handshake_failures_total"), 1);
    tls_client c(gw.port(), files.pem.cert);
    EXPECT_EQ(c.get("/echo/x").status, 200);
}

// A client that hangs up between requests without close_notify (OpenSSL reports the stream
// truncated) is a client gone, as a plain TCP one's FIN is: no 400 logged or counted for a
// request it never began (found by review: every such hang-up counted a 400).
TEST_F(ListenTls, AHangUpWithoutCloseNotifyIsNoBadRequest) {
    running_gateway gw(config_for(up.port(), files));
    {
        tls_client c(gw.port(), files.pem.cert);
        ASSERT_FALSE(c.handshake_error);
        ASSERT_EQ(c.get("/echo/x").status, 200);
        c.close_tcp();
    }
    ASSERT_TRUE(eventually(std::chrono::seconds(2), [&] { return gw.metric("batchgate_open_connections") == 0; }))
        << "the connection is still open";
    std::istringstream in(gw.metrics());
    for (std::string line; std::getline(in, line);)
        if (line.rfind("batchgate_requests_total{", 0) == 0)
            EXPECT_EQ(line.find("status=\"400\""), std::string::npos) << line;
}

TEST_F(ListenTls, AReloadBringsTheNewCertificateToNewConnections) {
    running_gateway gw(config_for(up.port(), files));
    tls_client before(gw.port(), files.pem.cert);
    ASSERT_FALSE(before.handshake_error);
    ASSERT_EQ(before.get("/echo/x").status, 200);

    tls_files next("next");
    {
        tls_client wrong(gw.port(), next.pem.cert);
        EXPECT_TRUE(wrong.handshake_error) << "a client trusting another CA accepted the certificate";
    }
    gw.server().reload(config_for(up.port(), next));
    // New connections get the new certificate: the old CA no longer verifies it.
    bool switched = false;
    for (int i = 0; i < 200 && !switched; ++i) {
        tls_client probe(gw.port(), files.pem.cert);
        switched = static_cast<bool>(probe.handshake_error);
        if (!switched) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    EXPECT_TRUE(switched) << "new connections still get the old certificate";
    tls_client after(gw.port(), next.pem.cert);
    ASSERT_FALSE(after.handshake_error) << after.handshake_error.message();
    EXPECT_EQ(after.get("/users/3").status, 200);
    // The connection made before the reload keeps working with its certificate.
    EXPECT_EQ(before.get("/echo/y").status, 200);
}

// Two writes at once on one TLS stream are undefined (their records interleave, or the stream's
// state breaks). A drain that runs out of time while an interim answer's head is being written
// to a client that does not read waits for that write to end: the client then decrypts whole
// 103 heads, as the upstream sent them, and one 503 after them, nothing else.
TEST_F(ListenTls, TheDrainsAnswerWaitsForAnInterimHeadBeingWritten) {
    const std::string early = "HTTP/1.1 103 Early Hints\r\nLink: </" + std::string(48 * 1024, 'a') + ">\r\n\r\n";
    net::io_context up_ioc;
    tcp::acceptor acceptor(up_ioc, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
    std::thread upstream([&] {
        tcp::socket s(up_ioc);
        beast::error_code ec;
        if (accept_and_read_head(acceptor, s).empty()) return;
        char buf[4096];
        // ~7 MB of 103s, more than the sockets hold: the writes back up until the gateway closes.
        for (int i = 0; i < 150 && !ec; ++i) net::write(s, net::buffer(early), ec);
        net::write(s, net::buffer(std::string("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")), ec);
        while (!ec) s.read_some(net::buffer(buf), ec);
    });
    // On a failed assertion the thread may still wait for the gateway's request: one that ends
    // at once lets it finish (after the gateway, declared below, is gone).
    const unsigned short up_port = acceptor.local_endpoint().port();
    auto join = [&](std::thread* t) {
        if (!t->joinable()) return;
        net::io_context c;
        tcp::socket s(c);
        beast::error_code ec;
        s.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), up_port), ec);
        net::write(s, net::buffer(std::string_view("GET / HTTP/1.1\r\n\r\n")), ec);
        s.close(ec);
        t->join();
    };
    std::unique_ptr<std::thread, decltype(join)> joined(&upstream, join);
    auto text = fill(yaml, {{"PORT", std::to_string(up_port)}, {"CERT", files.cert},
                            {"KEY", files.key}});
    text.replace(text.find("logging:"), 0, "limits: {drain_timeout: 300ms, send_timeout: 20s}\n");
    running_gateway gw(load_yaml(text));

    tls_client client(gw.port(), files.pem.cert);
    ASSERT_FALSE(client.handshake_error) << client.handshake_error.message();
    client.send("GET /early HTTP/1.1\r\nHost: gateway.test\r\n\r\n");
    // Not read: the gateway's writes of 103 heads back up until one stays pending.
    for (int i = 0; i < 500 && gw.metric(R"(batchgate_interim_answers_relayed_total{route="everything"})") < 2; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    gw.begin_drain();
    std::this_thread::sleep_for(std::chrono::seconds(1));  // well past the drain deadline (300 ms)
    beast::error_code ended;
    const std::string raw = client.read_until_closed(ended);
    gw.stop();
    upstream.join();
    EXPECT_TRUE(ended == net::error::eof || ended == ssl::error::stream_truncated)
        << "the TLS stream broke: " << ended.message();

    std::string_view rest(raw);
    std::size_t interim = 0;
    for (; rest.starts_with(early); rest.remove_prefix(early.size())) ++interim;
    EXPECT_GE(interim, 1u);
    EXPECT_LT(interim, 150u) << "the final answer came before the upstream's";
    http::response_parser<http::string_body> final_answer;
    final_answer.eager(true);
    beast::error_code ec;
    std::size_t used = 0;
    while (!ec && !final_answer.is_done() && used < rest.size())
        used += final_answer.put(net::buffer(rest.data() + used, rest.size() - used), ec);
    ASSERT_TRUE(final_answer.is_done()) << "after " << interim << " whole 103s: " << rest.substr(0, 200);
    EXPECT_EQ(final_answer.get().result_int(), 503);
    EXPECT_EQ(used, rest.size()) << "bytes after the final answer";
}
