// Test certificates made with the OpenSSL API (no files in the tree, nothing that expires),
// and a per-process temp directory to write them to. Shared by the TLS tests (unit and
// integration).
#pragma once

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <utility>

namespace batchgate::testing {

struct pem_pair {
    std::string cert;
    std::string key;
};

enum class key_kind { ec_p256, rsa_2048 };

// A self-signed certificate (its own CA) for IP 127.0.0.1 and DNS localhost, with a fresh key.
inline pem_pair make_certificate(key_kind kind = key_kind::ec_p256) {
    EVP_PKEY* key = kind == key_kind::ec_p256 ? EVP_EC_gen("P-256") : EVP_RSA_gen(2048);
    X509* x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, key);
    X509_NAME* name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("batchgate test"), -1, -1, 0);
    X509_set_issuer_name(x, name);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, nullptr, nullptr, 0);
    for (auto [nid, value] : {std::pair{NID_subject_alt_name, "IP:127.0.0.1,DNS:localhost"},
                              std::pair{NID_basic_constraints, "critical,CA:TRUE"}}) {
        X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, nid, value);
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    }
    X509_sign(x, key, EVP_sha256());
    auto to_string = [](BIO* bio) {
        char* data = nullptr;
        long n = BIO_get_mem_data(bio, &data);
        std::string out(data, static_cast<std::size_t>(n));
        BIO_free(bio);
        return out;
    };
    BIO* c = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(c, x);
    BIO* k = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(k, key, nullptr, nullptr, 0, nullptr, nullptr);
    pem_pair out{to_string(c), to_string(k)};
    X509_free(x);
    EVP_PKEY_free(key);
    return out;
}

// Writes text to NAME in this process's temp directory and returns the path.
inline std::string write_temp(const std::string& name, const std::string& text) {
    auto dir = std::filesystem::temp_directory_path() / ("batchgate-tls-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    auto path = (dir / name).string();
    std::ofstream(path) << text;
    return path;
}

}  // namespace batchgate::testing
