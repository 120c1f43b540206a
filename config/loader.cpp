// YAML -> gateway_config. Every check reports into one list instead of throwing, so a user
// sees all problems of a file in one run; config_error is thrown once at the end.
// This file is the top level (listen, logging, limits, the routes list with match, mode and
// passthrough); the sections live in load_upstreams.cpp, load_coalesce.cpp, load_fan_out.cpp
// and listen_tls.cpp, and what they share (context, map_reader, the readers) in
// load_context.hpp/.cpp.
#include "config/loader.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <limits>
#include <utility>

#include <yaml-cpp/yaml.h>

#include "config/load_context.hpp"
#include "config/load_sections.hpp"
#include "text/json_text.hpp"
#include "text/url.hpp"

namespace batchgate::config {

using namespace detail;

namespace {

std::string join_lines(const std::vector<std::string>& lines) {
    std::string out;
    for (const auto& l : lines) {
        if (!out.empty()) out += '\n';
        out += l;
    }
    return out;
}

// Parameter names of a path template, or an error text. The router's own parser decides, so
// the loader accepts exactly the templates the route table can match.
std::optional<std::string> check_path_template(std::string_view t, std::vector<std::string>& names) {
    if (t.find('?') != std::string_view::npos) return "must not contain a query string (\"?\")";
    try {
        routes::path_template parsed(t);
        names = parsed.param_names();
    } catch (const std::invalid_argument& e) {
        return e.what();
    }
    return std::nullopt;
}

// "host:port", "[v6]:port" or ":port".
std::optional<endpoint> read_endpoint(context& ctx, const field& f) {
    auto s = read_string(ctx, f);
    if (!s) return std::nullopt;
    auto fail = [&](const std::string& why) {
        ctx.add(f.mark(), f.path,
                "bad address " + quote(*s) + ": " + why + " (expected \"host:port\", \"[::1]:port\" or \":port\")");
        return std::nullopt;
    };
    std::string host;
    std::string_view port_text;
    std::string_view v = *s;
    if (!v.empty() && v.front() == '[') {
        auto close = v.find(']');
        if (close == std::string_view::npos) return fail("missing \"]\"");
        host = std::string(v.substr(1, close - 1));
        if (host.empty()) return fail("empty IPv6 address");
        if (close + 1 >= v.size() || v[close + 1] != ':') return fail("missing port");
        port_text = v.substr(close + 2);
    } else {
        auto colon = v.rfind(':');
        if (colon == std::string_view::npos) return fail("missing port");
        host = std::string(v.substr(0, colon));
        if (host.find(':') != std::string::npos) return fail("IPv6 addresses need brackets");
        for (char c : host)
            if (!is_name_char(c) || c == '_') return fail("bad host");
        if (host.empty()) host = "0.0.0.0";
        port_text = v.substr(colon + 1);
    }
    unsigned port = 0;
    if (!parse_uint(port_text, port) || port > 65535) return fail("port must be a number 0..65535");
    return endpoint{host, static_cast<std::uint16_t>(port)};
}

// ---------------------------------------------------------------------------------------
// Sections

void load_limits(context& ctx, const field& f, limits_settings& out) {
    map_reader m(ctx, f.value, f.path, {"max_body", "max_header", "idle_timeout", "drain_timeout", "max_json_depth",
                                            "max_connections", "max_buffered", "send_timeout"});
    if (!m.ok()) return;
    if (auto* x = m.get("max_body"))
        if (auto v = read_size(ctx, *x, false)) out.max_body_bytes = *v;
    if (auto* x = m.get("max_header")) {
        if (auto v = read_size(ctx, *x, false)) {
            // Beast keeps a field's value in 16 bits: past 64 KiB of head, one field could be longer
            // than it can hold (the parser throws instead of answering 431).
            if (*v > max_header_cap)
                ctx.add(x->mark(), x->path, "must be at most 64KiB (one field of a larger head could not be held)");
            else
                out.max_header_bytes = *v;
        }
    }
    if (auto* x = m.get("idle_timeout"))
        if (auto v = read_duration(ctx, *x, false)) out.idle_timeout = *v;
    if (auto* x = m.get("drain_timeout"))
        if (auto v = read_duration(ctx, *x, true)) out.drain_timeout = *v;
    if (auto* x = m.get("max_json_depth"))
        if (auto v = read_count(ctx, *x, 1, routes::max_json_depth_cap)) out.max_json_depth = *v;
    if (auto* x = m.get("max_connections"))
        if (auto v = read_count(ctx, *x, 1)) out.max_connections = *v;
    if (auto* x = m.get("max_buffered"))
        if (auto v = read_size(ctx, *x, false)) out.max_buffered_bytes = *v;
    if (auto* x = m.get("send_timeout"))
        if (auto v = read_duration(ctx, *x, false)) out.send_timeout = *v;
}

void load_logging(context& ctx, const field& f, logging_settings& out) {
    map_reader m(ctx, f.value, f.path, {"level", "access_log"});
    if (!m.ok()) return;
    if (auto* x = m.get("level")) {
        if (auto v = read_string(ctx, *x)) {
            if (*v == "debug" || *v == "info" || *v == "warn" || *v == "error")
                out.level = *v;
            else
                ctx.add(x->mark(), x->path, "unknown level " + quote(*v) + " (use debug, info, warn or error)");
        }
    }
    if (auto* x = m.get("access_log"))
        if (auto v = read_bool(ctx, *x)) out.access_log = *v;
}

void load_match(context& ctx, const field& f, route_match& out, match_shape& shape) {
    map_reader m(ctx, f.value, f.path, {"method", "path", "prefix"});
    if (!m.ok()) {
        shape.known = false;
        return;
    }
    if (auto* x = m.get("method")) {
        if (auto list = read_string_list(ctx, *x)) {
            if (list->empty()) ctx.add(x->mark(), x->path, "must list at least one method (leave it out for any method)");
            std::size_t i = 0;
            for (const auto& [text, mark] : *list) {
                auto p = x->value.IsSequence() ? index(x->path, i) : x->path;
                if (auto meth = read_method(ctx, text, mark, p))
                    if (std::find(out.methods.begin(), out.methods.end(), *meth) == out.methods.end())
                        out.methods.push_back(*meth);
                ++i;
            }
        }
    }
    shape.methods = out.methods;
    const field* path = m.get("path");
    const field* prefix = m.get("prefix");
    if (path && prefix) {
        ctx.add(prefix->key.Mark(), f.path, "give either path or prefix, not both");
    } else if (!path && !prefix) {
        ctx.add(m.mark(), child(f.path, "path"), "required key is missing (give match.path or match.prefix)");
        shape.known = false;
    }
    if (path) {
        if (auto s = read_string(ctx, *path)) {
            out.path = *s;
            if (auto err = check_path_template(*s, shape.params)) {
                ctx.add(path->mark(), path->path, "bad path template: " + *err);
                shape.known = false;
            }
        } else {
            shape.known = false;
        }
    }
    if (prefix) {
        if (auto s = read_string(ctx, *prefix)) {
            out.prefix = *s;
            if (s->empty() || s->front() != '/')
                ctx.add(prefix->mark(), prefix->path, "must start with \"/\"");
            else if (s->find_first_of("{}") != std::string::npos)
                ctx.add(prefix->mark(), prefix->path, "a prefix is literal; use match.path for \"{param}\" templates");
            else if (s->find('?') != std::string::npos)
                ctx.add(prefix->mark(), prefix->path, "must not contain a query string (\"?\")");
        }
    }
    shape.prefix = out.path.empty() && !out.prefix.empty();
}

// routes[].passthrough: caps and the idle timeout of a streamed passthrough exchange.
void load_passthrough(context& ctx, const field& f, passthrough_settings& out) {
    map_reader m(ctx, f.value, f.path, {"max_body", "max_response", "idle_timeout", "upgrade", "interim"});
    if (!m.ok()) return;
    if (auto* x = m.get("max_body"))
        if (auto v = read_size(ctx, *x, true)) out.max_body_bytes = *v;
    if (auto* x = m.get("max_response"))
        if (auto v = read_size(ctx, *x, true)) out.max_response_bytes = *v;
    if (auto* x = m.get("idle_timeout"))
        if (auto v = read_duration(ctx, *x, false)) out.idle_timeout = *v;
    if (auto* x = m.get("upgrade"))
        if (auto v = read_bool(ctx, *x)) out.upgrade = *v;
    if (auto* x = m.get("interim"))
        if (auto v = read_bool(ctx, *x)) out.relay_interim = *v;
}

std::string mode_name(route_mode m) {
    switch (m) {
        case route_mode::passthrough: return "passthrough";
        case route_mode::coalesce: return "coalesce";
        case route_mode::fan_out: return "fan_out";
        case route_mode::batch_envelope: return "batch_envelope";
    }
    return "passthrough";
}

void load_routes(context& ctx, const field& f, gateway_config& cfg, const YAML::Mark& root_mark) {
    if (!f.value.IsSequence()) {
        ctx.add(f.mark(), f.path, std::string("expected a list of routes, got ") + kind(f.value));
        return;
    }
    if (f.value.size() == 0) ctx.add(f.mark().is_null() ? root_mark : f.mark(), f.path, "at least one route is required");
    std::vector<std::pair<std::string, int>> names;  // name, line
    std::size_t i = 0;
    for (const auto& node : f.value) {
        const std::string path = index(f.path, i++);
        route_settings r;
        r.mark = {ctx.file, node.Mark().is_null() ? 0 : node.Mark().line + 1};
        map_reader m(ctx, node, path,
                     {"name", "match", "upstream", "mode", "timeout", "coalesce", "fan_out", "batch_envelope",
                      "passthrough"});
        if (!m.ok()) continue;
        if (auto* x = m.required("name")) {
            if (auto s = read_string(ctx, *x)) {
                r.name = *s;
                if (!is_valid_name(*s)) ctx.add(x->mark(), x->path, "bad route name " + quote(*s) + " (use A-Z a-z 0-9 _ . -)");
                auto first = std::find_if(names.begin(), names.end(), [&](const auto& n) { return n.first == *s; });
                if (first != names.end())
                    ctx.add(x->mark(), x->path,
                            "duplicate route name " + quote(*s) + " (first defined at line " + std::to_string(first->second) + ")");
                else
                    names.emplace_back(*s, x->mark().line + 1);
            }
        }
        route_shape shape;
        if (auto* x = m.required("match")) {
            if (x->value.IsSequence()) {
                if (x->value.size() == 0)
                    ctx.add(x->mark(), x->path, "must list at least one match entry");
                std::size_t j = 0;
                for (const auto& entry : x->value) {
                    field ef{x->key, entry, index(x->path, j++)};
                    route_match rm;
                    match_shape ms;
                    load_match(ctx, ef, rm, ms);
                    r.matches.push_back(std::move(rm));
                    shape.entries.push_back(std::move(ms));
                }
            } else {
                route_match rm;
                match_shape ms;
                load_match(ctx, *x, rm, ms);
                r.matches.push_back(std::move(rm));
                shape.entries.push_back(std::move(ms));
            }
            for (const auto& e : shape.entries)
                if (!e.known) shape.params_known = false;
            if (shape.entries.empty()) shape.params_known = false;
        } else {
            shape.params_known = false;
        }
        // A batch_envelope route sends nothing upstream itself: its upstream is optional.
        const field* mode_field = m.get("mode");
        const bool envelope_mode =
            mode_field && mode_field->value.IsScalar() && mode_field->value.Scalar() == "batch_envelope";
        if (auto* x = envelope_mode ? m.get("upstream") : m.required("upstream")) {
            if (auto s = read_string(ctx, *x)) {
                r.upstream = *s;
                if (!cfg.find_upstream(*s)) {
                    std::string known, suggestion;
                    std::size_t best = 3;
                    for (const auto& u : cfg.upstreams) {
                        known += (known.empty() ? "" : ", ") + u.name;
                        if (auto d = edit_distance(*s, u.name); d < best) best = d, suggestion = u.name;
                    }
                    ctx.add(x->mark(), x->path,
                            "unknown upstream " + quote(*s) +
                                (suggestion.empty() ? "" : " (did you mean " + quote(suggestion) + "?)") +
                                "; defined upstreams: " + (known.empty() ? std::string("none") : known));
                }
            }
        }
        bool mode_known = true;
        if (auto* x = m.get("mode")) {
            if (auto s = read_string(ctx, *x)) {
                if (*s == "passthrough") r.mode = route_mode::passthrough;
                else if (*s == "coalesce") r.mode = route_mode::coalesce;
                else if (*s == "fan_out") r.mode = route_mode::fan_out;
                else if (*s == "batch_envelope") r.mode = route_mode::batch_envelope;
                else {
                    mode_known = false;
                    ctx.add(x->mark(), x->path,
                            "unknown mode " + quote(*s) + " (expected passthrough, coalesce, fan_out or batch_envelope)");
                }
            } else {
                mode_known = false;
            }
        }
        if (auto* x = m.get("timeout"))
            if (auto v = read_duration(ctx, *x, true)) r.timeout = *v;
        const field* co = m.get("coalesce");
        const field* fo = m.get("fan_out");
        const field* be = m.get("batch_envelope");
        const field* pt = m.get("passthrough");
        if (mode_known) {
            // A section of another mode than the route's is an error at the section's key.
            for (auto [section, mode] : {std::pair{co, route_mode::coalesce}, {fo, route_mode::fan_out},
                                         {be, route_mode::batch_envelope}, {pt, route_mode::passthrough}}) {
                if (!section || r.mode == mode) continue;
                const std::string hint = mode == route_mode::passthrough ? "set mode: passthrough or leave mode out"
                                                                          : "add mode: " + mode_name(mode);
                ctx.add(section->key.Mark(), section->path,
                        mode_name(mode) + " settings given but mode is " + mode_name(r.mode) + " (" + hint + ")");
            }
            if (r.mode == route_mode::coalesce) {
                if (!co) ctx.add(m.mark(), child(path, "coalesce"), "required key is missing for mode: coalesce");
                else load_coalesce(ctx, *co, r.coalesce, shape);
            }
            if (r.mode == route_mode::fan_out) {
                if (!fo) ctx.add(m.mark(), child(path, "fan_out"), "required key is missing for mode: fan_out");
                else load_fan_out(ctx, *fo, r.fan_out);
                if (r.timeout.count() == 0) r.timeout = r.fan_out.timeout + std::chrono::seconds(1);
            }
            if (r.mode == route_mode::batch_envelope) {
                if (be) load_batch_envelope(ctx, *be, r.batch_envelope);
                if (r.timeout.count() == 0) r.timeout = r.batch_envelope.timeout + std::chrono::seconds(1);
            }
            if (r.mode == route_mode::passthrough && pt) load_passthrough(ctx, *pt, r.passthrough);
        }
        cfg.routes.push_back(std::move(r));
    }
}

// Whether two listeners would take the same port on some address. Literal addresses compare as
// addresses ("::0" is "::"); an unspecified one holds the port on every address of its family,
// "::" on both (Linux binds it dual-stack). A host name is taken to be any address of either
// family against a wildcard, and compares as written otherwise ("localhost" is not resolved).
bool listeners_overlap(const endpoint& a, const endpoint& b) {
    if (a.port != b.port) return false;
    struct literal {
        int family = 0;  // 0: a host name
        bool any = false;
        unsigned char bytes[16] = {};
    };
    auto read = [](const std::string& host) {
        literal l;
        if (::inet_pton(AF_INET, host.c_str(), l.bytes) == 1) l.family = AF_INET;
        else if (::inet_pton(AF_INET6, host.c_str(), l.bytes) == 1) l.family = AF_INET6;
        l.any = l.family != 0 && std::all_of(std::begin(l.bytes), std::end(l.bytes), [](unsigned char c) { return c == 0; });
        return l;
    };
    const literal x = read(a.host), y = read(b.host);
    if ((x.any && x.family == AF_INET6) || (y.any && y.family == AF_INET6)) return true;
    if (x.family == 0 || y.family == 0)
        return a.host == b.host || x.any || y.any;
    if (x.family != y.family) return false;
    return x.any || y.any || std::equal(std::begin(x.bytes), std::end(x.bytes), std::begin(y.bytes));
}

gateway_config load_tree(context& ctx, const YAML::Node& root) {
    gateway_config cfg;
    cfg.source_file = ctx.file;
    // Built, never assigned: assigning a YAML::Node rewrites the tree it referred to.
    const YAML::Node doc = root.IsNull() ? YAML::Node(YAML::NodeType::Map) : root;  // empty file: report what is missing
    map_reader m(ctx, doc, "",
                 {"listen", "admin_listen", "listen_tls", "worker_threads", "trusted_proxies", "logging", "limits",
                  "upstreams", "routes"});
    if (!m.ok()) return cfg;
    if (auto* x = m.get("listen"))
        if (auto e = read_endpoint(ctx, *x)) cfg.listen = *e;
    if (auto* x = m.get("admin_listen"))
        if (auto e = read_endpoint(ctx, *x)) cfg.admin_listen = *e;
    if (cfg.listen.port != 0 && listeners_overlap(cfg.listen, cfg.admin_listen)) {
        auto* x = m.get("admin_listen") ? m.get("admin_listen") : m.get("listen");
        if (x) ctx.add(x->mark(), x->path, "listen and admin_listen must be different addresses (a wildcard host, "
                                           "0.0.0.0 or ::, takes its port on every address)");
    }
    if (auto* x = m.get("listen_tls")) load_listen_tls(ctx, *x, cfg.listen_tls);
    if (auto* x = m.get("worker_threads"))
        if (auto v = read_int(ctx, *x, 0, 256)) cfg.worker_threads = static_cast<unsigned>(*v);
    if (auto* x = m.get("trusted_proxies"))
        if (auto list = read_string_list(ctx, *x))
            for (const auto& [text, mark] : *list) {
                if (auto n = ip_network::parse(text))
                    cfg.trusted_proxies.push_back(std::move(*n));
                else
                    ctx.add(mark, x->path, "\"" + text + "\" is not an IP network (an address, or address/prefix: "
                                           "10.0.0.0/8, fd00::/8)");
            }
    if (auto* x = m.get("logging")) load_logging(ctx, *x, cfg.logging);
    if (auto* x = m.get("limits")) load_limits(ctx, *x, cfg.limits);
    if (auto* x = m.required("upstreams")) load_upstreams(ctx, *x, cfg);
    if (auto* x = m.required("routes")) load_routes(ctx, *x, cfg, doc.Mark());
    return cfg;
}

}  // namespace

config_error::config_error(std::vector<std::string> errors)
    : std::runtime_error(join_lines(errors)), errors_(std::move(errors)) {}

gateway_config load_string(std::string_view yaml, const std::string& file_name) {
    context ctx{file_name, {}};
    YAML::Node root;
    try {
        root = YAML::Load(std::string(yaml));
    } catch (const YAML::Exception& e) {
        std::string where = file_name;
        if (!e.mark.is_null()) where += ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1);
        throw config_error({where + ": invalid YAML: " + e.msg});
    }
    gateway_config cfg = load_tree(ctx, root);
    if (!ctx.errors.empty()) {
        std::stable_sort(ctx.errors.begin(), ctx.errors.end(), [](const auto& a, const auto& b) {
            return a.line != b.line ? a.line < b.line : a.col < b.col;
        });
        std::vector<std::string> lines;
        for (auto& e : ctx.errors) lines.push_back(std::move(e.text));
        throw config_error(std::move(lines));
    }
    return cfg;
}

gateway_config load_file(const std::string& path) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) throw config_error({path + ": cannot read: " + std::strerror(errno)});
    std::string text;
    char buf[65536];
    std::size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
    bool failed = std::ferror(f) != 0;
    int err = errno;
    std::fclose(f);
    if (failed) throw config_error({path + ": cannot read: " + std::strerror(err)});
    return load_string(text, path);
}

std::optional<duration> parse_duration(std::string_view text) {
    if (text == "0") return duration{0};
    std::size_t digits = 0;
    while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
    if (digits == 0) return std::nullopt;
    std::uint64_t value = 0;
    if (!parse_uint(text.substr(0, digits), value)) return std::nullopt;
    std::string_view unit = text.substr(digits);
    // Units in microseconds, so sub-millisecond values can be rounded up at the end.
    std::uint64_t us_per_unit = 0;
    if (unit == "us") us_per_unit = 1;
    else if (unit == "ms") us_per_unit = 1000;
    else if (unit == "s") us_per_unit = 1000 * 1000;
    else if (unit == "m") us_per_unit = 60ULL * 1000 * 1000;
    else if (unit == "h") us_per_unit = 3600ULL * 1000 * 1000;
    else return std::nullopt;
    constexpr auto max_us = static_cast<std::uint64_t>(std::numeric_limits<duration::rep>::max());
    if (value > max_us / us_per_unit) return std::nullopt;
    std::uint64_t us = value * us_per_unit;
    return duration{static_cast<duration::rep>((us + 999) / 1000)};
}

std::optional<std::size_t> parse_size(std::string_view text) {
    std::size_t digits = 0;
    while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
    if (digits == 0) return std::nullopt;
    std::size_t value = 0;
    if (!parse_uint(text.substr(0, digits), value)) return std::nullopt;
    std::string_view unit = text.substr(digits);
    std::size_t mult = 0;
    if (unit.empty() || unit == "B") mult = 1;
    else if (unit == "KB") mult = 1000;
    else if (unit == "KiB") mult = 1024;
    else if (unit == "MB") mult = 1000 * 1000;
    else if (unit == "MiB") mult = 1024 * 1024;
    else if (unit == "GB") mult = 1000ULL * 1000 * 1000;
    else if (unit == "GiB") mult = 1024ULL * 1024 * 1024;
    else return std::nullopt;
    if (value > std::numeric_limits<std::size_t>::max() / mult) return std::nullopt;
    return value * mult;
}

}  // namespace batchgate::config
