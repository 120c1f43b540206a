// Request-head checks (gateway/request_head.hpp): what a client's head must satisfy before the
// session routes it. Each refused head would otherwise frame the connection ambiguously.
#include <gtest/gtest.h>

#include <string>

#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include "gateway/request_head.hpp"

namespace batchgate::gateway {
namespace {

namespace http = boost::beast::http;

// Parses a head as the session does; the parser must accept it.
std::optional<head_rejection> check(const std::string& head) {
    http::request_parser<http::string_body> parser;
    apply_limits(parser, config::limits_settings{});
    parser.eager(false);
    boost::beast::error_code ec;
    parser.put(boost::asio::buffer(head), ec);
    EXPECT_TRUE(!ec || ec == http::error::need_more) << ec.message();
    EXPECT_TRUE(parser.is_header_done());
    return check_request_head(parser.get().base());
}

TEST(RequestHead, PlainRequestsPass) {
    EXPECT_FALSE(check("GET /users/7 HTTP/1.1\r\nHost: gw\r\n\r\n"));
    EXPECT_FALSE(check("GET / HTTP/1.0\r\n\r\n"));
    EXPECT_FALSE(check("POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\n"));
    EXPECT_FALSE(check("POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"));
}

// Framed well, but with a coding the gateway cannot decode: RFC 9112 6.1 says 501.
TEST(RequestHead, ACodingBeforeChunkedIsNotImplemented) {
    for (const char* tes : {"Transfer-Encoding: gzip, chunked\r\n",
                            "Transfer-Encoding: gzip\r\nTransfer-Encoding: Chunked\r\n",
                            "transfer-encoding: gzip\r\nX-A: 1\r\nTRANSFER-ENCODING: chunked\r\n"}) {
        auto r = check(std::string("POST /a HTTP/1.1\r\nHost: gw\r\n") + tes + "\r\n");
        ASSERT_TRUE(r) << tes;
        EXPECT_EQ(r->error, gateway_error::not_implemented);
    }
}

TEST(RequestHead, ATargetByteOver0x7fIsRefused) {
    auto r = check("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: gw\r\n\r\n");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->error, gateway_error::bad_request);
}

TEST(RequestHead, HostMissingOrRepeated) {
    EXPECT_TRUE(check("GET / HTTP/1.1\r\n\r\n"));
    EXPECT_TRUE(check("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"));
    // A field's name in any case is that field, wherever it stands among the others.
    EXPECT_TRUE(check("GET / HTTP/1.1\r\nhOST: a\r\nX-A: 1\r\nHOST: a\r\n\r\n"));
    EXPECT_FALSE(check("GET / HTTP/1.1\r\nX-A: 1\r\nhost: a\r\nX-Host: b\r\n\r\n"));
    auto bad = check("GET / HTTP/1.1\r\nX-A: 1\r\nhoSt: a b\r\n\r\n");
    ASSERT_TRUE(bad);
    EXPECT_EQ(bad->message, "the Host header is not a host[:port]");
}

TEST(RequestHead, TransferEncodingNotEndingInChunkedIsRefused) {
    for (const char* te : {"gzip", "identity", "chunked, identity", "xchunked", "chunked, chunked", ""}) {
        auto r = check(std::string("POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: ") + te + "\r\n\r\n");
        ASSERT_TRUE(r) << te;
        EXPECT_EQ(r->error, gateway_error::bad_request);
    }
}

TEST(RequestHead, TransferEncodingWithContentLengthIsRefused) {
    // Beast itself refuses Content-Length after chunked; these orders reach the check.
    EXPECT_TRUE(check("POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\n"));
    auto r = check("POST /a HTTP/1.1\r\ntransfer-encoding: gzip\r\nHost: gw\r\ncontent-LENGTH: 3\r\n\r\n");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->message, "request has both Transfer-Encoding and Content-Length");
}

TEST(RequestHead, TransferEncodingInHttp10IsRefused) {
    EXPECT_TRUE(check("POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"));
}

// RFC 9112 3.2.2: the absolute-form target, rewritten to origin-form with the target's
// authority as Host.
struct normalized {
    std::optional<head_rejection> rejected;
    std::string target, host;
};
normalized normalize(const std::string& text) {
    http::request_parser<http::string_body> parser;
    parser.eager(false);
    boost::beast::error_code ec;
    parser.put(boost::asio::buffer(text), ec);
    EXPECT_TRUE(parser.is_header_done()) << ec.message();
    auto& head = parser.get().base();
    normalized out;
    out.rejected = normalize_target(head);
    out.target = std::string(head.target());
    out.host = std::string(head[http::field::host]);
    return out;
}

TEST(RequestHead, AnAbsoluteFormTargetBecomesOriginFormWithItsAuthorityAsHost) {
    struct row {
        const char* target;
        const char* origin;
        const char* host;
    };
    for (const row& r : std::initializer_list<row>{
             {"http://c/a", "/a", "c"},
             {"HTTP://c:8080/a/b?x=1&y=2", "/a/b?x=1&y=2", "c:8080"},
             {"https://api.example.com", "/", "api.example.com"},
             {"http://c?x=1", "/?x=1", "c"},
             {"http://[::1]:80/a", "/a", "[::1]:80"},
         }) {
        auto n = normalize(std::string("GET ") + r.target + " HTTP/1.1\r\nHost: other\r\n\r\n");
        EXPECT_FALSE(n.rejected) << r.target;
        EXPECT_EQ(n.target, r.origin) << r.target;
        EXPECT_EQ(n.host, r.host) << r.target;
    }
}

// RFC 9112 3.2.4: about the server, not about "/".
TEST(RequestHead, OptionsOfAnAbsoluteFormTargetWithoutPathOrQueryAsksAboutTheServer) {
    auto n = normalize("OPTIONS http://c:8001 HTTP/1.1\r\nHost: c\r\n\r\n");
    EXPECT_FALSE(n.rejected);
    EXPECT_EQ(n.target, "*");
    EXPECT_EQ(n.host, "c:8001");
    EXPECT_EQ(normalize("OPTIONS http://c/ HTTP/1.1\r\nHost: c\r\n\r\n").target, "/");
    EXPECT_EQ(normalize("OPTIONS http://c?x HTTP/1.1\r\nHost: c\r\n\r\n").target, "/?x");
    EXPECT_EQ(normalize("GET http://c HTTP/1.1\r\nHost: c\r\n\r\n").target, "/");
}

TEST(RequestHead, OtherTargetsAreLeftAsTheyAre) {
    for (const char* target : {"/a", "/http://c/a", "*", "c:443", "ftp://c/a", "mailto:x"}) {
        auto n = normalize(std::string("OPTIONS ") + target + " HTTP/1.1\r\nHost: other\r\n\r\n");
        EXPECT_FALSE(n.rejected) << target;
        EXPECT_EQ(n.target, target);
        EXPECT_EQ(n.host, "other");
    }
}

TEST(RequestHead, AnAbsoluteFormTargetWithoutHostOrWithUserinfoIsRefused) {
    for (const char* target : {"http:///a", "http://", "https://?x", "http://user@c/a", "http://u:p@c/", "http://:80/a",
                               "http://:/a", "http://[]/a", "https://:443", "http://[]:80"}) {
        auto n = normalize(std::string("GET ") + target + " HTTP/1.1\r\nHost: c\r\n\r\n");
        ASSERT_TRUE(n.rejected) << target;
        EXPECT_EQ(n.rejected->error, gateway_error::bad_request);
    }
}

// RFC 9112 3.2: a Host with an invalid field value is a 400, like a missing or repeated one.
TEST(RequestHead, AHostThatIsNotHostAndPortIsRefused) {
    for (const char* host : {"gw", "gw:8080", "gw:", "GW.Example.COM.", "127.0.0.1:1", "[::1]", "[::1]:443", "[fe80::1%25eth0]", "[fe80::1%eth0]", "[::ffff:1.2.3.4]", "[V1A.fe80::a+en1]",
                             "[v1.x]", "a,b", "a_b-c~d", "caf%C3%A9", "x!$&'()*+;="}) {
        EXPECT_TRUE(valid_host(host)) << host;
        EXPECT_FALSE(check(std::string("GET / HTTP/1.1\r\nHost: ") + host + "\r\n\r\n")) << host;
    }
    EXPECT_FALSE(check("GET / HTTP/1.1\r\nHost:\r\n\r\n"));  // empty: a target URI without an authority
    for (const char* host : {"a b", "a/b", "a?b", "a#b", "a@b", "u:p@b", "a\\b", "a:b", "a:1:2", ":80", ":", "[]", "[::1",
                             "[::1]x", "[::1]:x", "[a b]", "[evil.com]", "[1.2.3.4]", "[a,b]", "[::1%]", "[v1]", "[v.x]", "[vz.x]", "a%2", "a%zz", "a\"b", "<a>", "a{b}", "a|b", "a^b", "a`b",
                             "caf\xc3\xa9"}) {
        EXPECT_FALSE(valid_host(host)) << host;
        auto r = check(std::string("GET / HTTP/1.1\r\nHost: ") + host + "\r\n\r\n");
        ASSERT_TRUE(r) << host;
        EXPECT_EQ(r->error, gateway_error::bad_request);
    }
}

TEST(RequestHead, ATargetWithAFragmentIsRefused) {
    for (const char* target : {"/users/1#x", "/#", "/a?b#c", "http://c/a#x"}) {
        auto r = check(std::string("GET ") + target + " HTTP/1.1\r\nHost: c\r\n\r\n");
        ASSERT_TRUE(r) << target;
        EXPECT_EQ(r->error, gateway_error::bad_request);
    }
}

TEST(RequestHead, AnAbsoluteFormAuthorityThatIsNotHostAndPortIsRefused) {
    for (const char* target : {"http://a\\b/x", "http://a:b/x", "http://a:1:2/", "http://a%zz/", "http://[::1/", "http://[::1]x/"}) {
        auto n = normalize(std::string("GET ") + target + " HTTP/1.1\r\nHost: c\r\n\r\n");
        ASSERT_TRUE(n.rejected) << target;
        EXPECT_EQ(n.rejected->error, gateway_error::bad_request);
    }
    auto n = normalize("GET http://[::1]:8080/a HTTP/1.1\r\nHost: c\r\n\r\n");
    EXPECT_FALSE(n.rejected);
    EXPECT_EQ(n.host, "[::1]:8080");
}

}  // namespace
}  // namespace batchgate::gateway
