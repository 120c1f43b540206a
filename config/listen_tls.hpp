// listen_tls: the traffic listener's certificate files and protocol names. Shared by the loader
// (which loads the files when the config loads, so --check-config and a SIGHUP reload report a
// bad certificate setup with its line) and gateway/tls_server.cpp (which builds the listener's
// context the same way). OpenSSL stays out of this header.
#pragma once

#include <string>
#include <string_view>
#include <vector>

struct ssl_ctx_st;  // OpenSSL's SSL_CTX

namespace batchgate::config {

// OpenSSL's number for a listen_tls.protocols name: "TLSv1.2" -> TLS1_2_VERSION, "TLSv1.3" ->
// TLS1_3_VERSION; 0 for any other name.
int tls_protocol_version(std::string_view name);

// One problem with the listen_tls files: the key it belongs to and what is wrong.
struct tls_file_problem {
    std::string key;  // "cert_chain" or "key"
    std::string message;
};

// Loads the PEM certificate chain (leaf first) and the PEM private key into ctx and checks that
// the key belongs to the leaf certificate. Returns every problem found; empty means ctx holds
// both and is ready to serve. An empty path is skipped (the loader reports it on its own).
std::vector<tls_file_problem> use_certificate_files(ssl_ctx_st* ctx, const std::string& cert_chain,
                                                   const std::string& key);

}  // namespace batchgate::config
