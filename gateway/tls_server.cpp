// listen_tls: the traffic listener's TLS context (gateway/tls_server.hpp).
#include "gateway/tls_server.hpp"

#include <algorithm>
#include <string>
#include <vector>

#include <boost/asio/ssl/context.hpp>
#include <openssl/ssl.h>

#include "config/listen_tls.hpp"
#include "config/loader.hpp"

namespace batchgate::gateway {

namespace {

// ALPN: "http/1.1" when the client offers it; otherwise no protocol is selected and the
// handshake goes on (a client that offers only h2 learns from the missing answer).
int select_http11(SSL*, const unsigned char** out, unsigned char* out_len, const unsigned char* in,
                  unsigned int in_len, void*) {
    static const unsigned char ours[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    unsigned char* selected = nullptr;
    unsigned char selected_len = 0;
    if (SSL_select_next_proto(&selected, &selected_len, ours, sizeof ours, in, in_len) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = selected;
    *out_len = selected_len;
    return SSL_TLSEXT_ERR_OK;
}

}  // namespace

std::shared_ptr<boost::asio::ssl::context> make_server_tls_context(const config::listen_tls_settings& settings) {
    namespace ssl = boost::asio::ssl;
    const std::string where = settings.mark.file + ":" + std::to_string(settings.mark.line) + ": listen_tls";
    std::vector<std::string> errors;
    if (settings.cert_chain.empty()) errors.push_back(where + ".cert_chain: required key is missing");
    if (settings.key.empty()) errors.push_back(where + ".key: required key is missing");
    if (settings.protocols.empty()) errors.push_back(where + ".protocols: must list at least one protocol");
    int lowest = TLS1_3_VERSION, highest = TLS1_2_VERSION;
    for (const auto& p : settings.protocols) {
        const int version = config::tls_protocol_version(p);
        if (version == 0) errors.push_back(where + ".protocols: unknown protocol \"" + p + "\"");
        lowest = std::min(lowest, version == 0 ? lowest : version);
        highest = std::max(highest, version);
    }
    if (!errors.empty()) throw config::config_error(std::move(errors));

    auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
    SSL_CTX* native = ctx->native_handle();
    for (const auto& p : config::use_certificate_files(native, settings.cert_chain, settings.key))
        errors.push_back(where + "." + p.key + ": " + p.message);
    if (!errors.empty()) throw config::config_error(std::move(errors));
    // The two known versions are adjacent, so [lowest, highest] is exactly the listed set.
    SSL_CTX_set_min_proto_version(native, lowest);
    SSL_CTX_set_max_proto_version(native, highest);
    SSL_CTX_set_options(native, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    // An idle keep-alive connection gives its read and write buffers back (about 34 KiB).
    SSL_CTX_set_mode(native, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_alpn_select_cb(native, select_http11, nullptr);
    return ctx;
}

}  // namespace batchgate::gateway
