// https:// upstreams: a real TLS server on 127.0.0.1 (a certificate made by the test with
// OpenSSL, relaying the decrypted bytes to the plain mock upstream), so coalesced batch calls
// and passthrough are checked end to end, and so are certificate and name verification.
#include <boost/asio/ssl.hpp>
#include <boost/beast/ssl.hpp>

#include <array>
#include <set>

#include "tests/integration/harness.hpp"
#include "tests/test_certs.hpp"

using namespace batchgate::testing;
using batchgate::mock::mock_upstream;
namespace ssl = boost::asio::ssl;

namespace {

// Terminates TLS on 127.0.0.1:0 and relays each connection's bytes to a plain port.
class tls_front {
public:
    tls_front(const pem_pair& pem, unsigned short plain_port)
        : ctx_(ssl::context::tls_server), acceptor_(ioc_, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0)),
          target_(net::ip::make_address("127.0.0.1"), plain_port) {
        ctx_.use_certificate_chain(net::buffer(pem.cert));
        ctx_.use_private_key(net::buffer(pem.key), ssl::context::pem);
        accept();
        thread_ = std::thread([this] { ioc_.run(); });
    }
    ~tls_front() {
        ioc_.stop();
        thread_.join();
    }
    unsigned short port() const { return acceptor_.local_endpoint().port(); }
    int handshakes() const { return handshakes_.load(); }

private:
    struct link : std::enable_shared_from_this<link> {
        link(tcp::socket s, ssl::context& ctx, net::io_context& ioc) : tls(std::move(s), ctx), plain(ioc) {}
        beast::ssl_stream<tcp::socket> tls;
        tcp::socket plain;
        std::array<char, 16384> up{}, down{};
    };

    void accept() {
        acceptor_.async_accept([this](beast::error_code ec, tcp::socket s) {
            if (ec) return;
            auto l = std::make_shared<link>(std::move(s), ctx_, ioc_);
            l->tls.async_handshake(ssl::stream_base::server, [this, l](beast::error_code ec) {
                if (ec) return;  // the client refused our certificate, say
                ++handshakes_;
                l->plain.async_connect(target_, [l](beast::error_code ec) {
                    if (ec) return;
                    pump_up(l);
                    pump_down(l);
                });
            });
            accept();
        });
    }
    // client -> upstream
    static void pump_up(std::shared_ptr<link> l) {
        l->tls.async_read_some(net::buffer(l->up), [l](beast::error_code ec, std::size_t n) {
            if (ec) return l->plain.close();
            net::async_write(l->plain, net::buffer(l->up.data(), n), [l](beast::error_code ec, std::size_t) {
                if (!ec) pump_up(l);
            });
        });
    }
    // upstream -> client
    static void pump_down(std::shared_ptr<link> l) {
        l->plain.async_read_some(net::buffer(l->down), [l](beast::error_code ec, std::size_t n) {
            if (ec) return beast::get_lowest_layer(l->tls).close();
            net::async_write(l->tls, net::buffer(l->down.data(), n), [l](beast::error_code ec, std::size_t) {
                if (!ec) pump_down(l);
            });
        });
    }

    net::io_context ioc_;
    ssl::context ctx_;
    tcp::acceptor acceptor_;
    tcp::endpoint target_;
    std::atomic<int> handshakes_{0};
    std::thread thread_;
};

const char* yaml = R"(
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
worker_threads: 2
upstreams:
  secure:
    url: https://{{HOST}}:{{PORT}}
    connect_timeout: 1s
{{TLS}}
routes:
  - name: users
    match: {method: GET, path: "/users/{id}"}
    upstream: secure
    mode: coalesce
    coalesce:
      key: {path: id}
      max_wait: 20ms
      request: {method: GET, path: /users, encoding: query_list, query_param: ids}
      response: {items: "", key: /id}
  - name: everything
    match: {prefix: /}
    upstream: secure
)";

std::shared_ptr<const batchgate::config::gateway_config> config_for(unsigned short port, const std::string& tls,
                                                                    const std::string& host = "127.0.0.1") {
    return load_yaml(fill(yaml, {{"PORT", std::to_string(port)}, {"TLS", tls}, {"HOST", host}}));
}

class Tls : public ::testing::Test {
protected:
    pem_pair pem = make_certificate();
    mock_upstream up;
    tls_front front{pem, up.port()};
    std::string ca = write_temp("ca.pem", pem.cert);
};

}  // namespace

TEST_F(Tls, CoalescedCallsAndPassthroughGoOverVerifiedTls) {
    running_gateway gw(config_for(front.port(), "    tls: {ca_file: " + ca + "}"));
    auto results = concurrently(20, [&](int i) { return get(gw.port(), "/users/" + std::to_string(i + 1)); });
    for (int i = 0; i < 20; ++i) {
        ASSERT_EQ(results[i].status, 200) << results[i].body;
        EXPECT_EQ(results[i].json()["id"], std::to_string(i + 1));
    }
    EXPECT_LE(up.count("GET", "/users"), 3u) << "the 20 callers still share a few batch calls";
    auto echo = send_request(gw.port(), "POST", "/echo/x", R"({"a":1})", {{"Content-Type", "application/json"}});
    ASSERT_EQ(echo.status, 200) << echo.body;
    EXPECT_EQ(echo.json()["body"], R"({"a":1})");
    EXPECT_EQ(echo.json()["headers"]["host"], "127.0.0.1:" + std::to_string(front.port()));
    // Pooled TLS connections are reused, not handshaken per request.
    for (int i = 0; i < 10; ++i) ASSERT_EQ(get(gw.port(), "/echo/again").status, 200);
    EXPECT_LE(front.handshakes(), 8);
}

// A body spans several TLS records (16 KiB each): all of it must reach the upstream, for
// passthrough and for a batch call alike.
TEST_F(Tls, BodiesLargerThanOneTlsRecordArriveWhole) {
    running_gateway gw(config_for(front.port(), "    tls: {ca_file: " + ca + "}"));
    for (std::size_t n : {16384u, 16385u, 100000u, 1000000u}) {
        std::string body(n, 'b');
        body.front() = '<';
        body.back() = '>';
        auto r = send_request(gw.port(), "POST", "/echo/big", body, {{"Content-Type", "text/plain"}});
        ASSERT_EQ(r.status, 200) << n << ": " << r.body.substr(0, 200);
        EXPECT_EQ(r.json()["body"], body) << n;
    }
}

TEST_F(Tls, UntrustedCertificateIs502WithTheReason) {
    running_gateway gw(config_for(front.port(), ""));  // the system store does not know our CA
    auto r = get(gw.port(), "/echo/x");
    EXPECT_EQ(r.status, 502) << r.body;
    EXPECT_NE(r.body.find("certificate verify failed"), std::string::npos) << r.body;
    EXPECT_EQ(up.calls().size(), 0u);
}

TEST_F(Tls, NameMismatchIs502AndVerifyFalseAcceptsAnything) {
    {
        running_gateway gw(config_for(front.port(), "    tls: {ca_file: " + ca + ", server_name: api.example.com}"));
        auto r = get(gw.port(), "/echo/x");
        EXPECT_EQ(r.status, 502) << r.body;
        EXPECT_NE(r.body.find("TLS handshake failed"), std::string::npos) << r.body;
    }
    {
        // The DNS name in the certificate matches too.
        running_gateway gw(config_for(front.port(), "    tls: {ca_file: " + ca + "}", "localhost"));
        EXPECT_EQ(get(gw.port(), "/echo/x").status, 200);
    }
    running_gateway gw(config_for(front.port(), "    tls: {verify: false}"));
    EXPECT_EQ(get(gw.port(), "/echo/x").status, 200);
}

TEST(TlsConfig, MistakesAreConfigErrorsWithTheirLine) {
    auto errors = [](const std::string& upstream) {
        try {
            load_yaml("upstreams:\n  u:\n" + upstream + "routes:\n  - {name: r, match: {prefix: /}, upstream: u}\n");
        } catch (const batchgate::config::config_error& e) {
            return e.errors();
        }
        return std::vector<std::string>{};
    };
    auto e = errors("    url: http://127.0.0.1:1\n    tls: {verify: false}\n");
    ASSERT_EQ(e.size(), 1u);
    EXPECT_NE(e[0].find(":4:5: upstreams.u.tls: tls is only used with an https:// url"), std::string::npos) << e[0];
    e = errors("    url: https://127.0.0.1\n    tls: {ca_file: /nonexistent/ca.pem, verfy: false}\n");
    ASSERT_EQ(e.size(), 2u);
    EXPECT_NE(e[0].find(":4:20: upstreams.u.tls.ca_file: cannot read \"/nonexistent/ca.pem\""), std::string::npos) << e[0];
    EXPECT_NE(e[1].find(":4:41: upstreams.u.tls.verfy: unknown key \"verfy\" (did you mean \"verify\"?)"), std::string::npos) << e[1];
    // --check-config must not pass a CA file the gateway could not load at start.
    const std::string not_pem = write_temp("not-a-ca.pem", "this is not a pem\n");
    e = errors("    url: https://127.0.0.1\n    tls: {ca_file: " + not_pem + "}\n");
    ASSERT_EQ(e.size(), 1u);
    EXPECT_NE(e[0].find("upstreams.u.tls.ca_file: \"" + not_pem + "\" holds no PEM certificate"), std::string::npos) << e[0];
    auto cfg = load_yaml("upstreams:\n  u: {url: \"https://api.example.com\"}\nroutes:\n  - {name: r, match: {prefix: /}, upstream: u}\n");
    EXPECT_TRUE(cfg->upstreams[0].tls);
    EXPECT_EQ(cfg->upstreams[0].port, 443);
    EXPECT_TRUE(cfg->upstreams[0].tls_verify);
}
