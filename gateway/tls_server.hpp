// The traffic listener's TLS context (listen_tls). The admin listener stays plain.
#pragma once

#include <memory>

#include "config/config.hpp"

namespace boost::asio::ssl {
class context;  // kept out of this header: only tls_server.cpp needs OpenSSL
}

namespace batchgate::gateway {

// A tls_server context with settings.cert_chain (leaf first) and settings.key, only the
// versions in settings.protocols, no compression, no renegotiation, the server's cipher order,
// and ALPN answered with "http/1.1" when the client offers it. Each call reads the files again
// (SIGHUP: new connections get the new certificate; a built context never changes).
// Throws config::config_error ("FILE:LINE: listen_tls.key: ...", the line of the listen_tls
// section) when the files do not load or the key does not match.
std::shared_ptr<boost::asio::ssl::context> make_server_tls_context(const config::listen_tls_settings& settings);

}  // namespace batchgate::gateway
