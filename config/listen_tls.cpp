// listen_tls: the traffic listener's certificate files (config/listen_tls.hpp) and the loader's
// section (load_sections.hpp), which loads them into a throwaway SSL_CTX exactly as
// gateway/tls_server.cpp loads them into the listener's.
#include "config/listen_tls.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "config/load_context.hpp"
#include "config/load_sections.hpp"

namespace batchgate::config {

namespace {

// The reasons OpenSSL queued on this thread, earliest (the cause) first, without repeats and
// without the bare "PEM lib"-style ones that only name the library passing the error on; the
// queue is left empty.
std::string openssl_reasons() {
    std::string out;
    char buf[256];
    while (const unsigned long e = ERR_get_error()) {
        const char* reason = ERR_reason_error_string(e);
        if (!reason) {
            ERR_error_string_n(e, buf, sizeof buf);
            reason = buf;
        }
        const std::string_view r = reason;
        if (r.ends_with(" lib") || out.find(r) != std::string::npos) continue;
        out += (out.empty() ? "" : ", ") + std::string(r);
    }
    return out.empty() ? "unknown OpenSSL error" : out;
}

// The file's text, or why it cannot be read (missing, no permission, a directory).
std::optional<std::string> read_text(const std::string& path, std::string& text) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) return "cannot read " + detail::quote(path) + ": " + std::strerror(errno);
    char buf[16384];
    std::size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
    const bool failed = std::ferror(f) != 0;
    const int err = errno;
    std::fclose(f);
    if (failed) return "cannot read " + detail::quote(path) + ": " + std::strerror(err);
    return std::nullopt;
}

// Encrypted keys are not supported: no pass phrase is ever asked for (OpenSSL's default would
// prompt on the terminal), for the key nor for anything in the chain file.
int no_pass_phrase(char*, int, int, void*) {
    return -1;
}

}  // namespace

int tls_protocol_version(std::string_view name) {
    if (name == "TLSv1.2") return TLS1_2_VERSION;
    if (name == "TLSv1.3") return TLS1_3_VERSION;
    return 0;
}

std::vector<tls_file_problem> use_certificate_files(ssl_ctx_st* ctx, const std::string& cert_chain,
                                                   const std::string& key) {
    std::vector<tls_file_problem> problems;
    SSL_CTX_set_default_passwd_cb(ctx, no_pass_phrase);
    ERR_clear_error();
    bool have_chain = false;
    std::string text;
    if (!cert_chain.empty()) {
        if (auto why = read_text(cert_chain, text))
            problems.push_back({"cert_chain", *why});
        else if (text.find("CERTIFICATE-----") == std::string::npos)
            problems.push_back({"cert_chain", detail::quote(cert_chain) +
                                                  " holds no PEM certificate (-----BEGIN CERTIFICATE-----)"});
        else if (SSL_CTX_use_certificate_chain_file(ctx, cert_chain.c_str()) != 1)
            problems.push_back({"cert_chain", "cannot load a PEM certificate chain from " + detail::quote(cert_chain) +
                                                  ": " + openssl_reasons()});
        else
            have_chain = true;
    }
    if (key.empty()) return problems;
    text.clear();
    if (auto why = read_text(key, text)) {
        problems.push_back({"key", *why});
        return problems;
    }
    if (text.find("PRIVATE KEY-----") == std::string::npos) {
        problems.push_back({"key", detail::quote(key) + " holds no PEM private key (-----BEGIN PRIVATE KEY-----)"});
        return problems;
    }
    if (text.find("-----BEGIN ENCRYPTED PRIVATE KEY-----") != std::string::npos ||
        text.find("Proc-Type: 4,ENCRYPTED") != std::string::npos) {
        problems.push_back({"key", detail::quote(key) + " holds an encrypted private key; encrypted keys are not supported"});
        return problems;
    }
    ERR_clear_error();
    std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> pkey(nullptr, EVP_PKEY_free);
    if (BIO* bio = BIO_new_mem_buf(text.data(), static_cast<int>(text.size()))) {
        pkey.reset(PEM_read_bio_PrivateKey(bio, nullptr, no_pass_phrase, nullptr));
        BIO_free(bio);
    }
    OPENSSL_cleanse(text.data(), text.size());
    if (!pkey) {
        problems.push_back({"key", "cannot load a PEM private key from " + detail::quote(key) + ": " + openssl_reasons()});
        return problems;
    }
    const auto mismatch = [&] {
        problems.push_back({"key", have_chain ? "the private key in " + detail::quote(key) +
                                                    " does not match the first certificate in " +
                                                    detail::quote(cert_chain) + ": " + openssl_reasons()
                                              : "cannot use the private key in " + detail::quote(key) + ": " +
                                                    openssl_reasons()});
        return problems;
    };
    // The leaf's own check first: SSL_CTX_use_PrivateKey would take a key of another type
    // (an RSA key for an EC certificate) without a word and leave the certificate keyless.
    if (have_chain && X509_check_private_key(SSL_CTX_get0_certificate(ctx), pkey.get()) != 1) return mismatch();
    if (SSL_CTX_use_PrivateKey(ctx, pkey.get()) != 1) return mismatch();
    if (have_chain && SSL_CTX_check_private_key(ctx) != 1) return mismatch();
    return problems;
}

}  // namespace batchgate::config

namespace batchgate::config::detail {

void load_listen_tls(context& ctx, const field& f, listen_tls_settings& out) {
    out.enabled = true;
    out.mark = {ctx.file, f.key.Mark().line + 1};
    map_reader m(ctx, f.value, f.path, {"cert_chain", "key", "protocols"});
    if (!m.ok()) return;
    auto read_path = [&](const field* x, std::string& into) {
        if (!x) return;
        auto s = read_string(ctx, *x);
        if (!s) return;
        if (s->empty()) ctx.add(x->mark(), x->path, "must not be empty");
        into = *s;
    };
    const field* cert = m.required("cert_chain");
    const field* key = m.required("key");
    read_path(cert, out.cert_chain);
    read_path(key, out.key);
    if (auto* x = m.get("protocols")) {
        if (auto list = read_string_list(ctx, *x)) {
            if (list->empty()) ctx.add(x->mark(), x->path, "must list at least one protocol (leave it out for both)");
            std::vector<std::string> protocols;
            std::size_t i = 0;
            for (const auto& [name, mark] : *list) {
                const auto p = x->value.IsSequence() ? index(x->path, i++) : x->path;
                if (tls_protocol_version(name) == 0)
                    ctx.add(mark, p, "unknown protocol " + quote(name) + " (expected TLSv1.2 or TLSv1.3)");
                else if (std::find(protocols.begin(), protocols.end(), name) != protocols.end())
                    ctx.add(mark, p, "duplicate protocol " + quote(name));
                else
                    protocols.push_back(name);
            }
            if (!list->empty()) out.protocols = std::move(protocols);
        }
    }
    // Loaded now, as the listener will load them, so a bad pair is a config error with its line.
    std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> probe(SSL_CTX_new(TLS_server_method()), SSL_CTX_free);
    if (!probe) {
        ctx.add(f.key.Mark(), f.path, "cannot check the files: " + openssl_reasons());
        return;
    }
    for (const auto& p : use_certificate_files(probe.get(), out.cert_chain, out.key)) {
        const field* at = p.key == "key" ? key : cert;
        ctx.add(at->mark(), at->path, p.message);
    }
}

}  // namespace batchgate::config::detail
