// make_server_tls_context (gateway/tls_server.hpp): the context it builds from listen_tls
// serves a real TLS handshake on loopback, with only the listed protocol versions, and a file
// that no longer loads is a config_error naming the listen_tls section's line.
#include "gateway/tls_server.hpp"

#include <gtest/gtest.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>

#include <chrono>
#include <filesystem>

#include "config/loader.hpp"
#include "tests/test_certs.hpp"

using namespace batchgate;
namespace certs = batchgate::testing;
using namespace std::chrono_literals;
namespace net = boost::asio;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;

namespace {

config::listen_tls_settings settings_for(const std::string& cert, const std::string& key,
                                         std::vector<std::string> protocols = {"TLSv1.2", "TLSv1.3"}) {
    config::listen_tls_settings s;
    s.enabled = true;
    s.cert_chain = cert;
    s.key = key;
    s.protocols = std::move(protocols);
    s.mark = {"gw.yaml", 7};
    return s;
}

// A client that trusts the test certificate and offers ALPN h2 and http/1.1.
ssl::context client_context(const certs::pem_pair& pem, int max_version = 0) {
    ssl::context ctx(ssl::context::tls_client);
    ctx.add_certificate_authority(net::buffer(pem.cert));
    ctx.set_verify_mode(ssl::verify_peer);
    ctx.set_verify_callback(ssl::host_name_verification("localhost"));
    static const unsigned char alpn[] = {2, 'h', '2', 8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    SSL_CTX_set_alpn_protos(ctx.native_handle(), alpn, sizeof alpn);
    if (max_version) SSL_CTX_set_max_proto_version(ctx.native_handle(), max_version);
    return ctx;
}

struct handshake_result {
    boost::system::error_code server, client;
    int version = 0;   // the client's negotiated version when it succeeded
    std::string alpn;  // the protocol the server selected
};

// One connection on 127.0.0.1: the server side with server_ctx, the client with client_ctx.
handshake_result handshake(ssl::context& server_ctx, ssl::context& client_ctx) {
    net::io_context ioc;
    tcp::acceptor acceptor(ioc, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
    ssl::stream<tcp::socket> server(ioc, server_ctx), client(ioc, client_ctx);
    SSL_set_tlsext_host_name(client.native_handle(), "localhost");
    handshake_result r;
    acceptor.async_accept(server.next_layer(), [&](boost::system::error_code ec) {
        if (ec) {
            r.server = ec;
            return;
        }
        server.async_handshake(ssl::stream_base::server, [&](boost::system::error_code ec) { r.server = ec; });
    });
    client.next_layer().async_connect(acceptor.local_endpoint(), [&](boost::system::error_code ec) {
        if (ec) {
            r.client = ec;
            return;
        }
        client.async_handshake(ssl::stream_base::client, [&](boost::system::error_code ec) {
            r.client = ec;
            if (ec) return;
            r.version = SSL_version(client.native_handle());
            const unsigned char* p = nullptr;
            unsigned int n = 0;
            SSL_get0_alpn_selected(client.native_handle(), &p, &n);
            r.alpn.assign(reinterpret_cast<const char*>(p), n);
        });
    });
    ioc.run_for(10s);
    return r;
}

class TlsServer : public ::testing::Test {
protected:
    certs::pem_pair pem = certs::make_certificate();
    std::string cert = certs::write_temp("server-cert.pem", pem.cert);
    std::string key = certs::write_temp("server-key.pem", pem.key);
};

}  // namespace

TEST_F(TlsServer, AGoodPairServesAHandshake) {
    auto ctx = gateway::make_server_tls_context(settings_for(cert, key));
    ASSERT_NE(ctx, nullptr);
    auto client = client_context(pem);
    auto r = handshake(*ctx, client);
    EXPECT_FALSE(r.server) << r.server.message();
    ASSERT_FALSE(r.client) << r.client.message();
    EXPECT_EQ(r.version, TLS1_3_VERSION);
    EXPECT_EQ(r.alpn, "http/1.1");
    const long options = SSL_CTX_get_options(ctx->native_handle());
    EXPECT_TRUE(options & SSL_OP_NO_COMPRESSION);
    EXPECT_TRUE(options & SSL_OP_NO_RENEGOTIATION);
    EXPECT_TRUE(options & SSL_OP_CIPHER_SERVER_PREFERENCE);
}

TEST_F(TlsServer, ATls12OnlyClientIsServedUnlessTheServerIsTls13Only) {
    auto both = gateway::make_server_tls_context(settings_for(cert, key));
    auto tls12_client = client_context(pem, TLS1_2_VERSION);
    auto r = handshake(*both, tls12_client);
    ASSERT_FALSE(r.client) << r.client.message();
    EXPECT_EQ(r.version, TLS1_2_VERSION);
    EXPECT_EQ(r.alpn, "http/1.1");

    auto tls13_only = gateway::make_server_tls_context(settings_for(cert, key, {"TLSv1.3"}));
    r = handshake(*tls13_only, tls12_client);
    EXPECT_TRUE(r.client) << "a TLSv1.2-only client got through to a TLSv1.3-only server";
    EXPECT_TRUE(r.server);
    EXPECT_EQ(SSL_CTX_get_min_proto_version(tls13_only->native_handle()), TLS1_3_VERSION);
    EXPECT_EQ(SSL_CTX_get_max_proto_version(tls13_only->native_handle()), TLS1_3_VERSION);
}

TEST_F(TlsServer, ATls12OnlyServerNegotiatesTls12) {
    auto tls12_only = gateway::make_server_tls_context(settings_for(cert, key, {"TLSv1.2"}));
    auto client = client_context(pem);
    auto r = handshake(*tls12_only, client);
    ASSERT_FALSE(r.client) << r.client.message();
    EXPECT_EQ(r.version, TLS1_2_VERSION);
}

TEST_F(TlsServer, SettingsFromTheLoaderWork) {
    const auto cfg = config::load_string("listen_tls:\n  cert_chain: " + cert + "\n  key: " + key +
                                             "\n  protocols: [TLSv1.3]\n"
                                             "upstreams: {a: {url: 'http://127.0.0.1:1'}}\n"
                                             "routes: [{name: r, match: {prefix: /}, upstream: a}]\n",
                                         "t.yaml");
    auto ctx = gateway::make_server_tls_context(cfg.listen_tls);
    auto client = client_context(pem);
    auto r = handshake(*ctx, client);
    ASSERT_FALSE(r.client) << r.client.message();
    EXPECT_EQ(r.version, TLS1_3_VERSION);
}

// The files are read again on every call (SIGHUP): one that changed since the config loaded is
// a config_error at the listen_tls section's line, naming the key.
TEST_F(TlsServer, FilesThatNoLongerLoadAreConfigErrorsWithTheSectionsLine) {
    const auto other = certs::make_certificate();
    const auto other_key = certs::write_temp("server-other-key.pem", other.key);
    try {
        gateway::make_server_tls_context(settings_for(cert, other_key));
        FAIL() << "a key of another certificate was accepted";
    } catch (const config::config_error& e) {
        ASSERT_EQ(e.errors().size(), 1u) << e.what();
        EXPECT_EQ(e.errors()[0], "gw.yaml:7: listen_tls.key: the private key in \"" + other_key +
                                     "\" does not match the first certificate in \"" + cert +
                                     "\": key values mismatch");
    }
    try {
        gateway::make_server_tls_context(settings_for("/nonexistent/chain.pem", "/nonexistent/key.pem"));
        FAIL() << "missing files were accepted";
    } catch (const config::config_error& e) {
        EXPECT_EQ(e.errors(), (std::vector<std::string>{
                                  "gw.yaml:7: listen_tls.cert_chain: cannot read \"/nonexistent/chain.pem\": No such file or directory",
                                  "gw.yaml:7: listen_tls.key: cannot read \"/nonexistent/key.pem\": No such file or directory"}));
    }
    EXPECT_THROW(gateway::make_server_tls_context(settings_for(cert, key, {"TLSv1.1"})), config::config_error);
    EXPECT_THROW(gateway::make_server_tls_context(settings_for(cert, key, {})), config::config_error);
}
