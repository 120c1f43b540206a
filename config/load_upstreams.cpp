// upstreams: name -> url, connection limits, timeouts and tls (with its CA file, read now).
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <set>
#include <utility>

#include <openssl/err.h>
#include <openssl/x509_vfy.h>

#include "config/load_context.hpp"
#include "config/load_sections.hpp"

namespace batchgate::config::detail {

namespace {

void parse_upstream_url(context& ctx, const field& f, upstream_settings& u) {
    auto s = read_string(ctx, f);
    if (!s) return;
    u.url = *s;
    std::string_view v = *s;
    auto fail = [&](const std::string& why) { ctx.add(f.mark(), f.path, why); };
    u.tls = v.rfind("https://", 0) == 0;
    if (!u.tls && v.rfind("http://", 0) != 0)
        return fail("bad url " + quote(*s) + ": expected http://host[:port] or https://host[:port]");
    v.remove_prefix(u.tls ? 8 : 7);
    auto slash = v.find('/');
    std::string_view authority = v.substr(0, slash);
    if (slash != std::string_view::npos) {
        std::string_view rest = v.substr(slash);
        if (rest != "/")
            return fail("bad url " + quote(*s) + ": must not have a path (got " + quote(rest) +
                        "); routes and coalesce.request.path give the path");
    }
    if (authority.find_first_of("?#@") != std::string_view::npos)
        return fail("bad url " + quote(*s) + ": expected http://host[:port] without user, query or fragment");
    std::string host;
    std::string_view port_text;
    if (!authority.empty() && authority.front() == '[') {
        auto close = authority.find(']');
        if (close == std::string_view::npos || close == 1) return fail("bad url " + quote(*s) + ": bad IPv6 address");
        host = std::string(authority.substr(1, close - 1));
        std::string_view after = authority.substr(close + 1);
        if (!after.empty()) {
            if (after.front() != ':') return fail("bad url " + quote(*s) + ": expected \":port\" after \"]\"");
            port_text = after.substr(1);
            if (port_text.empty()) return fail("bad url " + quote(*s) + ": empty port");
        }
    } else {
        auto colon = authority.find(':');
        host = std::string(authority.substr(0, colon));
        if (colon != std::string_view::npos) {
            port_text = authority.substr(colon + 1);
            if (port_text.empty()) return fail("bad url " + quote(*s) + ": empty port");
        }
        if (host.empty()) return fail("bad url " + quote(*s) + ": missing host");
        for (char c : host)
            if (!is_name_char(c)) return fail("bad url " + quote(*s) + ": bad host " + quote(host));
    }
    if (!port_text.empty()) {
        unsigned port = 0;
        if (!parse_uint(port_text, port) || port == 0 || port > 65535)
            return fail("bad url " + quote(*s) + ": port must be 1..65535");
        u.port = static_cast<std::uint16_t>(port);
    } else {
        u.port = u.tls ? 443 : 80;
    }
    u.host = host;
}

// The CA file as the gateway loads it (SSL_CTX_load_verify_locations reads it through the same
// X509 lookup): every PEM block must parse. nullopt when it loads.
std::optional<std::string> load_ca_file(const std::string& path) {
    X509_STORE* store = X509_STORE_new();
    if (!store) return "out of memory";
    ERR_clear_error();
    const bool ok = X509_STORE_load_file(store, path.c_str()) == 1;
    std::string why;
    if (!ok) {
        char buf[256];
        const unsigned long e = ERR_peek_last_error();
        ERR_error_string_n(e, buf, sizeof buf);
        why = e ? ERR_reason_error_string(e) ? ERR_reason_error_string(e) : buf : "no certificate could be read";
    }
    ERR_clear_error();
    X509_STORE_free(store);
    if (ok) return std::nullopt;
    return why;
}

void load_upstream_tls(context& ctx, const field& f, upstream_settings& u) {
    map_reader m(ctx, f.value, f.path, {"verify", "ca_file", "server_name"});
    if (!m.ok()) return;
    if (!u.tls) ctx.add(f.key.Mark(), f.path, "tls is only used with an https:// url");
    if (auto* x = m.get("verify"))
        if (auto v = read_bool(ctx, *x)) u.tls_verify = *v;
    if (auto* x = m.get("ca_file")) {
        if (auto v = read_string(ctx, *x)) {
            // Read now, so a wrong path is a config error with its line, not a failed start.
            std::ifstream in(*v);
            std::string text;
            if (in) text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
            if (!in && !in.eof())
                ctx.add(x->mark(), x->path, "cannot read " + quote(*v) + ": " + std::strerror(errno));
            else if (text.find("-----BEGIN CERTIFICATE-----") == std::string::npos)
                ctx.add(x->mark(), x->path, quote(*v) + " holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
            else if (auto why = load_ca_file(*v))
                ctx.add(x->mark(), x->path, "cannot load certificates from " + quote(*v) + ": " + *why);
            u.tls_ca_file = *v;
        }
    }
    if (auto* x = m.get("server_name")) {
        if (auto v = read_string(ctx, *x)) {
            bool ok = !v->empty();
            for (char c : *v) ok = ok && is_name_char(c);
            if (!ok) ctx.add(x->mark(), x->path, "bad server name " + quote(*v));
            u.tls_server_name = *v;
        }
    }
}

void load_concurrency(context& ctx, const field& f, concurrency_settings& out) {
    map_reader m(ctx, f.value, f.path, {"limit", "initial", "min", "max"});
    if (!m.ok()) return;
    if (auto* x = m.get("limit")) {
        const bool number = x->value.IsScalar() && !x->value.Scalar().empty() &&
                            x->value.Scalar().find_first_not_of("0123456789") == std::string::npos;
        if (x->value.IsScalar() && x->value.Scalar() == "adaptive") {
            out.adaptive = true;
        } else if (!number) {
            ctx.add(x->mark(), x->path,
                    "expected adaptive or a fixed number of batch calls, got " +
                        (x->value.IsScalar() ? quote(x->value.Scalar()) : std::string(kind(x->value))));
        } else if (auto v = read_count(ctx, *x, 1, 100000)) {
            out.adaptive = false;
            out.initial = out.min = out.max = *v;
        }
    }
    const bool fixed = !out.adaptive;
    for (auto [name, target] : {std::pair{"initial", &out.initial}, {"min", &out.min}, {"max", &out.max}}) {
        auto* x = m.get(name);
        if (!x) continue;
        if (fixed) {
            ctx.add(x->key.Mark(), x->path, std::string(name) + " is only used with limit: adaptive");
            continue;
        }
        if (auto v = read_count(ctx, *x, 1, 100000)) *target = *v;
    }
    if (fixed) return;
    if (out.min > out.max)
        ctx.add(f.mark(), f.path, "min (" + std::to_string(out.min) + ") is above max (" + std::to_string(out.max) + ")");
    else if (out.initial < out.min || out.initial > out.max)
        ctx.add(f.mark(), f.path, "initial (" + std::to_string(out.initial) + ") must lie between min (" +
                                      std::to_string(out.min) + ") and max (" + std::to_string(out.max) + ")");
}

}  // namespace

void load_upstreams(context& ctx, const field& f, gateway_config& cfg) {
    if (!f.value.IsMap()) {
        ctx.add(f.mark(), f.path, std::string("expected a map of upstream name -> settings, got ") + kind(f.value));
        return;
    }
    std::set<std::string> seen;
    for (auto it = f.value.begin(); it != f.value.end(); ++it) {
        const YAML::Node k = it->first;  // a copy: it-> returns a temporary proxy
        if (!k.IsScalar()) {
            ctx.add(k.Mark(), f.path, std::string("upstream names must be strings, got ") + kind(k));
            continue;
        }
        const std::string name = k.Scalar();
        const std::string path = child(f.path, name);
        if (!is_valid_name(name)) ctx.add(k.Mark(), path, "bad upstream name " + quote(name) + " (use A-Z a-z 0-9 _ . -)");
        if (!seen.insert(name).second) {
            ctx.add(k.Mark(), path, "duplicate upstream name");
            continue;
        }
        upstream_settings u;
        u.name = name;
        u.mark = {ctx.file, k.Mark().line + 1};
        map_reader m(ctx, it->second, path,
                     {"url", "max_connections", "connect_timeout", "request_timeout", "max_response", "keep_alive", "tls",
                      "concurrency"});
        if (m.ok()) {
            if (auto* x = m.required("url")) parse_upstream_url(ctx, *x, u);
            if (auto* x = m.get("max_connections"))
                if (auto v = read_count(ctx, *x, 1)) u.max_connections = *v;
            if (auto* x = m.get("connect_timeout"))
                if (auto v = read_duration(ctx, *x, false)) u.connect_timeout = *v;
            if (auto* x = m.get("request_timeout"))
                if (auto v = read_duration(ctx, *x, false)) u.request_timeout = *v;
            if (auto* x = m.get("max_response"))
                if (auto v = read_size(ctx, *x, false)) u.max_response_bytes = *v;
            if (auto* x = m.get("keep_alive"))
                if (auto v = read_bool(ctx, *x)) u.keep_alive = *v;
            if (auto* x = m.get("tls")) load_upstream_tls(ctx, *x, u);
            if (auto* x = m.get("concurrency")) load_concurrency(ctx, *x, u.concurrency);
        }
        cfg.upstreams.push_back(std::move(u));
    }
}

}  // namespace batchgate::config::detail
