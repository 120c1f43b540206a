// YAML -> gateway_config. Every check reports into one list instead of throwing, so a user
// sees all problems of a file in one run; config_error is thrown once at the end.
#include "config/loader.hpp"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <utility>

#include <openssl/err.h>
#include <openssl/x509_vfy.h>
#include <yaml-cpp/yaml.h>

#include "fanout/core/fan_out.hpp"
#include "routes/json_text.hpp"
#include "routes/route_table.hpp"

namespace batchgate::config {

namespace {

std::string join_lines(const std::vector<std::string>& lines) {
    std::string out;
    for (const auto& l : lines) {
        if (!out.empty()) out += '\n';
        out += l;
    }
    return out;
}

// ---------------------------------------------------------------------------------------
// Small text helpers

bool is_name_char(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
}

bool is_valid_name(std::string_view s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), is_name_char);
}

// RFC 9110 tchar: what method names and header field names are made of.
bool is_token(std::string_view s) {
    if (s.empty()) return false;
    for (char c : s) {
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
        if (!ok || c == '\0') return false;
    }
    return true;
}

std::string to_upper(std::string s) {
    for (auto& c : s)
        if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
    return s;
}

std::string to_lower(std::string s) {
    for (auto& c : s)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    return s;
}

std::string quote(std::string_view s) {
    return "\"" + std::string(s) + "\"";
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::size_t> prev(b.size() + 1), cur(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        cur[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            std::size_t sub = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
            cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
        }
        std::swap(prev, cur);
    }
    return prev[b.size()];
}

// RFC 6901: "" or "/..." where '~' is only followed by '0' or '1'. Kept here (not in routes/)
// so the loader does not depend on the data-path library.
bool is_valid_json_pointer(std::string_view p) {
    if (p.empty()) return true;
    if (p.front() != '/') return false;
    for (std::size_t i = 0; i < p.size(); ++i) {
        if (p[i] == '~' && (i + 1 >= p.size() || (p[i + 1] != '0' && p[i + 1] != '1'))) return false;
    }
    return true;
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

template <typename Int>
bool parse_uint(std::string_view s, Int& out) {
    if (s.empty() || s.front() < '0' || s.front() > '9') return false;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    return ec == std::errc{} && p == s.data() + s.size();
}

// ---------------------------------------------------------------------------------------
// Error collection

struct located_error {
    int line;
    int col;
    std::string text;
};

struct context {
    std::string file;
    std::vector<located_error> errors;

    void add(const YAML::Mark& mark, const std::string& path, const std::string& msg) {
        int line = mark.is_null() ? 1 : mark.line + 1;
        int col = mark.is_null() ? 1 : mark.column + 1;
        std::string text = file + ":" + std::to_string(line) + ":" + std::to_string(col) + ": ";
        if (!path.empty()) text += path + ": ";
        text += msg;
        errors.push_back({line, col, std::move(text)});
    }
};

std::string child(const std::string& path, std::string_view key) {
    return path.empty() ? std::string(key) : path + "." + std::string(key);
}

std::string index(const std::string& path, std::size_t i) {
    return path + "[" + std::to_string(i) + "]";
}

const char* kind(const YAML::Node& n) {
    switch (n.Type()) {
        case YAML::NodeType::Map: return "a map";
        case YAML::NodeType::Sequence: return "a list";
        case YAML::NodeType::Scalar: return "a scalar";
        case YAML::NodeType::Null: return "nothing (null)";
        default: return "nothing";
    }
}

// A present key: its value and the best place to point at (a null value has no useful mark).
struct field {
    YAML::Node key;
    YAML::Node value;
    std::string path;
    YAML::Mark mark() const { return value.IsNull() || value.Mark().is_null() ? key.Mark() : value.Mark(); }
};

// One YAML mapping checked against its known keys: unknown and duplicate keys are reported
// on construction; lookups never modify the tree (non-const operator[] would).
class map_reader {
public:
    map_reader(context& ctx, const YAML::Node& node, std::string path,
               std::initializer_list<std::string_view> known)
        : ctx_(ctx), node_(node), path_(std::move(path)) {
        if (!node.IsMap()) {
            ok_ = false;
            ctx_.add(node.Mark(), path_, std::string("expected a map, got ") + kind(node));
            return;
        }
        for (auto it = node.begin(); it != node.end(); ++it) {
            const YAML::Node k = it->first;  // a copy: it-> returns a temporary proxy
            if (!k.IsScalar()) {
                ctx_.add(k.Mark(), path_, std::string("map keys must be plain strings, got ") + kind(k));
                continue;
            }
            const std::string& name = k.Scalar();
            if (std::find(known.begin(), known.end(), name) == known.end()) {
                std::string msg = "unknown key " + quote(name);
                std::size_t best = 3;
                std::string_view suggestion;
                for (auto cand : known) {
                    std::size_t d = edit_distance(name, cand);
                    if (d < best) {
                        best = d;
                        suggestion = cand;
                    }
                }
                if (!suggestion.empty()) msg += " (did you mean " + quote(suggestion) + "?)";
                ctx_.add(k.Mark(), child(path_, name), msg);
                continue;
            }
            auto dup = std::find_if(fields_.begin(), fields_.end(),
                                    [&](const field& f) { return f.key.Scalar() == name; });
            if (dup != fields_.end()) {
                ctx_.add(k.Mark(), child(path_, name),
                         "duplicate key (first given at line " + std::to_string(dup->key.Mark().line + 1) + ")");
                continue;
            }
            fields_.push_back({k, it->second, child(path_, name)});
        }
    }

    bool ok() const { return ok_; }
    const std::string& path() const { return path_; }
    YAML::Mark mark() const { return node_.Mark(); }

    const field* get(std::string_view key) const {
        for (const auto& f : fields_)
            if (f.key.Scalar() == key) return &f;
        return nullptr;
    }

    const field* required(std::string_view key) const {
        const field* f = get(key);
        if (!f && ok_) ctx_.add(node_.Mark(), child(path_, key), "required key is missing");
        return f;
    }

private:
    context& ctx_;
    YAML::Node node_;
    std::string path_;
    bool ok_ = true;
    std::vector<field> fields_;
};

// ---------------------------------------------------------------------------------------
// Typed scalar readers: each reports its own error and returns nullopt on failure.

std::optional<std::string> read_string(context& ctx, const field& f) {
    if (!f.value.IsScalar()) {
        ctx.add(f.mark(), f.path, std::string("expected a string, got ") + kind(f.value));
        return std::nullopt;
    }
    return f.value.Scalar();
}

// A string or a list of strings (method, partition lists, forward_headers).
std::optional<std::vector<std::pair<std::string, YAML::Mark>>> read_string_list(context& ctx, const field& f) {
    std::vector<std::pair<std::string, YAML::Mark>> out;
    if (f.value.IsScalar()) {
        out.emplace_back(f.value.Scalar(), f.value.Mark());
        return out;
    }
    if (!f.value.IsSequence()) {
        ctx.add(f.mark(), f.path, std::string("expected a string or a list of strings, got ") + kind(f.value));
        return std::nullopt;
    }
    bool ok = true;
    std::size_t i = 0;
    for (const auto& item : f.value) {
        if (!item.IsScalar()) {
            ctx.add(item.Mark().is_null() ? f.mark() : item.Mark(), index(f.path, i),
                    std::string("expected a string, got ") + kind(item));
            ok = false;
        } else {
            out.emplace_back(item.Scalar(), item.Mark());
        }
        ++i;
    }
    if (!ok) return std::nullopt;
    return out;
}

std::optional<bool> read_bool(context& ctx, const field& f) {
    bool v = false;
    if (f.value.IsScalar() && YAML::convert<bool>::decode(f.value, v)) return v;
    ctx.add(f.mark(), f.path, "expected true or false, got " +
                                  (f.value.IsScalar() ? quote(f.value.Scalar()) : std::string(kind(f.value))));
    return std::nullopt;
}

std::string range_text(long long min, long long max) {
    if (max == std::numeric_limits<long long>::max()) return "must be at least " + std::to_string(min);
    return "must be between " + std::to_string(min) + " and " + std::to_string(max);
}

std::optional<long long> read_int(context& ctx, const field& f, long long min, long long max) {
    if (!f.value.IsScalar()) {
        ctx.add(f.mark(), f.path, std::string("expected a whole number, got ") + kind(f.value));
        return std::nullopt;
    }
    const std::string& s = f.value.Scalar();
    long long v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec == std::errc::result_out_of_range) {
        ctx.add(f.mark(), f.path, range_text(min, max) + ", got " + s);
        return std::nullopt;
    }
    if (s.empty() || ec != std::errc{} || p != s.data() + s.size()) {
        ctx.add(f.mark(), f.path, "expected a whole number, got " + quote(s));
        return std::nullopt;
    }
    if (v < min || v > max) {
        ctx.add(f.mark(), f.path, range_text(min, max) + ", got " + s);
        return std::nullopt;
    }
    return v;
}

std::optional<std::size_t> read_count(context& ctx, const field& f, long long min,
                                      long long max = std::numeric_limits<long long>::max()) {
    auto v = read_int(ctx, f, min, max);
    if (!v) return std::nullopt;
    return static_cast<std::size_t>(*v);
}

std::optional<duration> read_duration(context& ctx, const field& f, bool allow_zero) {
    if (!f.value.IsScalar()) {
        ctx.add(f.mark(), f.path, std::string("expected a duration like \"5ms\" or \"2s\", got ") + kind(f.value));
        return std::nullopt;
    }
    auto d = parse_duration(f.value.Scalar());
    if (!d) {
        ctx.add(f.mark(), f.path,
                "bad duration " + quote(f.value.Scalar()) +
                    ": expected a whole number with a unit us, ms, s, m or h, like \"5ms\" or \"2s\"");
        return std::nullopt;
    }
    if (!allow_zero && d->count() == 0) {
        ctx.add(f.mark(), f.path, "must be greater than 0");
        return std::nullopt;
    }
    return d;
}

std::optional<std::size_t> read_size(context& ctx, const field& f, bool allow_zero) {
    if (!f.value.IsScalar()) {
        ctx.add(f.mark(), f.path, std::string("expected a size like \"64KiB\" or \"10MB\", got ") + kind(f.value));
        return std::nullopt;
    }
    auto s = parse_size(f.value.Scalar());
    if (!s) {
        ctx.add(f.mark(), f.path,
                "bad size " + quote(f.value.Scalar()) +
                    ": expected a whole number of bytes with an optional unit B, KB, KiB, MB, MiB, GB or GiB");
        return std::nullopt;
    }
    if (!allow_zero && *s == 0) {
        ctx.add(f.mark(), f.path, "must be greater than 0");
        return std::nullopt;
    }
    return s;
}

std::optional<std::string> read_pointer(context& ctx, const field& f, bool allow_root) {
    auto s = read_string(ctx, f);
    if (!s) return std::nullopt;
    if (!is_valid_json_pointer(*s)) {
        ctx.add(f.mark(), f.path,
                "bad JSON pointer " + quote(*s) + ": must be \"\" or start with \"/\", and \"~\" must be followed by 0 or 1");
        return std::nullopt;
    }
    if (!allow_root && s->empty()) {
        ctx.add(f.mark(), f.path, "must not be empty (leave the key out instead)");
        return std::nullopt;
    }
    return s;
}

std::optional<std::string> read_method(context& ctx, const std::string& text, const YAML::Mark& mark,
                                       const std::string& path) {
    std::string m = to_upper(text);
    if (!is_token(m)) {
        ctx.add(mark, path, "bad HTTP method " + quote(text));
        return std::nullopt;
    }
    return m;
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
// YAML -> JSON for request.body, plus the placeholder checks on its strings.

bool looks_like_float(std::string_view s) {
    std::size_t i = 0;
    if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
    std::size_t digits = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i, ++digits;
    bool dot = false, exp = false;
    if (i < s.size() && s[i] == '.') {
        dot = true;
        ++i;
        while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i, ++digits;
    }
    if (digits == 0) return false;
    if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
        exp = true;
        ++i;
        if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
        std::size_t ed = 0;
        while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i, ++ed;
        if (ed == 0) return false;
    }
    return i == s.size() && (dot || exp);
}

nlohmann::json plain_scalar_to_json(const std::string& s) {
    if (s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL") return nullptr;
    if (s == "true" || s == "True" || s == "TRUE") return true;
    if (s == "false" || s == "False" || s == "FALSE") return false;
    {
        std::string_view v = s;
        if (!v.empty() && v.front() == '+') v.remove_prefix(1);
        std::int64_t i = 0;
        auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), i);
        if (!v.empty() && ec == std::errc{} && p == v.data() + v.size()) return i;
        std::uint64_t u = 0;
        auto [p2, ec2] = std::from_chars(v.data(), v.data() + v.size(), u);
        if (!v.empty() && ec2 == std::errc{} && p2 == v.data() + v.size()) return u;
        bool all_digits = !v.empty() && std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; });
        if (all_digits || (v.size() > 1 && v.front() == '-' &&
                           std::all_of(v.begin() + 1, v.end(), [](char c) { return c >= '0' && c <= '9'; })))
            return std::strtod(s.c_str(), nullptr);  // too big for 64 bits: keep it a number
    }
    if (looks_like_float(s)) return std::strtod(s.c_str(), nullptr);
    return s;
}

struct placeholder_use {
    // "path", "query", "header", "body" (name = JSON pointer, "" = the whole body), "items", "key",
    // "method", "map" (name = map name)
    std::string source;
    std::string name;
    std::string type;    // type suffix without ':' ("" = none)
    YAML::Mark mark;
    std::string path;    // key path of the string that uses it

    std::string text() const { return "{" + source + (name.empty() ? "" : "." + name) + "}"; }
};

bool is_type_suffix(std::string_view t) {
    return t == "int" || t == "number" || t == "bool" || t == "string" || t == "json";
}

// Finds {...} placeholders in a template string. Returns an error text for malformed ones.
// A ":TYPE" suffix is split off at the last ':'.
std::optional<std::string> scan_placeholders(std::string_view s, const YAML::Mark& mark, const std::string& path,
                                             std::vector<placeholder_use>& uses) {
    std::size_t pos = 0;
    while (pos < s.size()) {
        std::size_t open = s.find_first_of("{}", pos);
        if (open == std::string_view::npos) break;
        if (s[open] == '}') return "unmatched \"}\"";
        std::size_t close = s.find_first_of("{}", open + 1);
        if (close == std::string_view::npos || s[close] == '{') return "unmatched \"{\"";
        const std::string_view whole = s.substr(open + 1, close - open - 1);
        std::string_view inner = whole;
        placeholder_use u{"", "", "", mark, path};
        if (auto colon = inner.rfind(':'); colon != std::string_view::npos) {
            std::string_view type = inner.substr(colon + 1);
            inner = inner.substr(0, colon);
            if (!is_type_suffix(type))
                return "unknown type suffix \":" + std::string(type) + "\" in {" + std::string(whole) +
                       "}: use :int, :number, :bool, :string or :json";
            u.type = std::string(type);
        }
        if (inner == "items" || inner == "key" || inner == "method" || inner == "body") {
            u.source = std::string(inner);
            if (inner == "items" && !u.type.empty()) return "{items} takes no type suffix";
        } else {
            auto dot = inner.find('.');
            std::string_view src = dot == std::string_view::npos ? inner : inner.substr(0, dot);
            std::string_view name = dot == std::string_view::npos ? std::string_view{} : inner.substr(dot + 1);
            if ((src != "path" && src != "query" && src != "header" && src != "body" && src != "map") || name.empty())
                return "unknown placeholder {" + std::string(whole) +
                       "}: use {path.NAME}, {query.NAME}, {header.NAME}, {body./POINTER} or {items}; "
                       "request.item may also use {key}, {method}, {body} and {map.NAME}";
            u.source = std::string(src);
            u.name = std::string(name);
            if (src == "header") u.name = to_lower(u.name);
            if (src == "body" && (name.front() != '/' || !is_valid_json_pointer(name)))
                return "bad JSON pointer \"" + std::string(name) + "\" in {" + std::string(whole) +
                       "}: write {body./field} (\"~\" must be followed by 0 or 1)";
        }
        uses.push_back(std::move(u));
        pos = close + 1;
    }
    return std::nullopt;
}

// YAML -> JSON. With templates, string scalars are scanned for placeholders (collected in uses);
// without, they are plain strings (request.maps values, body_value).
nlohmann::json yaml_to_json(context& ctx, const YAML::Node& n, const std::string& path,
                            std::vector<placeholder_use>& uses, const YAML::Mark& fallback, bool templates = true) {
    const YAML::Mark mark = n.Mark().is_null() ? fallback : n.Mark();
    switch (n.Type()) {
        case YAML::NodeType::Sequence: {
            auto arr = nlohmann::json::array();
            std::size_t i = 0;
            for (const auto& item : n) arr.push_back(yaml_to_json(ctx, item, index(path, i++), uses, mark, templates));
            return arr;
        }
        case YAML::NodeType::Map: {
            auto obj = nlohmann::json::object();
            for (auto it = n.begin(); it != n.end(); ++it) {
                if (!it->first.IsScalar()) {
                    ctx.add(it->first.Mark(), path, "JSON object keys must be strings");
                    continue;
                }
                const std::string k = it->first.Scalar();
                if (obj.contains(k)) {
                    ctx.add(it->first.Mark(), child(path, k), "duplicate key");
                    continue;
                }
                obj[k] = yaml_to_json(ctx, it->second, child(path, k), uses, it->first.Mark(), templates);
            }
            return obj;
        }
        case YAML::NodeType::Scalar: {
            const std::string& s = n.Scalar();
            if (n.Tag() != "!" && n.Tag() != "tag:yaml.org,2002:str") {  // quoted or !!str: a string
                auto j = plain_scalar_to_json(s);
                if (!j.is_string()) return j;
            }
            if (!templates) return s;
            std::vector<placeholder_use> found;
            if (auto err = scan_placeholders(s, mark, path, found)) {
                ctx.add(mark, path, *err);
                return s;
            }
            for (const auto& u : found) {
                if (u.source == "items" && s != "{items}")
                    ctx.add(mark, path,
                            "{items} must be a whole string value (\"{items}\"): it is replaced by the JSON array of items");
                else
                    uses.push_back(u);
            }
            return s;
        }
        default:
            return nullptr;
    }
}

// ---------------------------------------------------------------------------------------
// Sections

void load_limits(context& ctx, const field& f, limits_settings& out) {
    map_reader m(ctx, f.value, f.path, {"max_body", "max_header", "idle_timeout", "drain_timeout", "max_json_depth",
                                            "max_connections", "max_buffered", "send_timeout"});
    if (!m.ok()) return;
    if (auto* x = m.get("max_body"))
        if (auto v = read_size(ctx, *x, false)) out.max_body_bytes = *v;
    if (auto* x = m.get("max_header"))
        if (auto v = read_size(ctx, *x, false)) out.max_header_bytes = *v;
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
                     {"url", "max_connections", "connect_timeout", "request_timeout", "max_response", "tls"});
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
            if (auto* x = m.get("tls")) load_upstream_tls(ctx, *x, u);
        }
        cfg.upstreams.push_back(std::move(u));
    }
}

// What the coalesce checks need to know about one match entry.
struct match_shape {
    bool prefix = false;                // uses match.prefix: no parameters
    bool known = true;                  // false when its path itself was bad (or missing)
    std::vector<std::string> params;    // parameters of its path template
    std::vector<std::string> methods;   // upper case; empty = any
};

// ... and about the route's match entries together.
struct route_shape {
    std::vector<match_shape> entries;
    bool params_known = true;  // false when any match entry was bad: skip follow-on errors

    // Every entry lists only GET/HEAD (an entry without method counts as not GET).
    bool read_only() const {
        if (entries.empty()) return false;
        for (const auto& e : entries) {
            if (e.methods.empty()) return false;
            for (const auto& m : e.methods)
                if (m != "GET" && m != "HEAD") return false;
        }
        return true;
    }
    // Methods the route can receive, or nullopt when some entry takes any method.
    std::optional<std::vector<std::string>> methods() const {
        std::vector<std::string> out;
        for (const auto& e : entries) {
            if (e.methods.empty()) return std::nullopt;
            for (const auto& m : e.methods)
                if (std::find(out.begin(), out.end(), m) == out.end()) out.push_back(m);
        }
        return out;
    }
    bool in_every_entry(const std::string& param) const {
        for (const auto& e : entries)
            if (std::find(e.params.begin(), e.params.end(), param) == e.params.end()) return false;
        return true;
    }
};

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

std::string join(const std::vector<std::string>& v, const char* none = "none") {
    std::string out;
    for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
    return out.empty() ? std::string(none) : out;
}

// A path parameter named by key.path (in_every = false: one entry is enough), partition.path
// (in_every = true) or an item template (false).
bool check_path_param(context& ctx, const std::string& name, const YAML::Mark& mark, const std::string& path,
                      const route_shape& shape, const std::string& what, bool in_every) {
    if (!shape.params_known || shape.entries.empty()) return false;
    auto has = [&](const match_shape& e) { return std::find(e.params.begin(), e.params.end(), name) != e.params.end(); };
    if (shape.entries.size() == 1) {
        const auto& e = shape.entries.front();
        if (e.prefix) {
            ctx.add(mark, path, what + " needs a route with match.path (this route uses match.prefix, which has no parameters)");
            return false;
        }
        if (!has(e)) {
            ctx.add(mark, path, quote(name) + " is not a parameter of match.path (parameters: " + join(e.params) + ")");
            return false;
        }
        return true;
    }
    if (in_every) {
        for (std::size_t i = 0; i < shape.entries.size(); ++i) {
            const auto& e = shape.entries[i];
            if (has(e)) continue;
            const std::string entry = "match[" + std::to_string(i) + "]";
            ctx.add(mark, path,
                    quote(name) + (e.prefix ? " is not a parameter of " + entry + " (it uses match.prefix, which has no parameters)"
                                            : " is not a parameter of " + entry + ".path (parameters: " + join(e.params) + ")") +
                        "; " + what + " must be a parameter of every match entry");
            return false;
        }
        return true;
    }
    std::vector<std::string> all;
    bool all_prefix = true;
    for (const auto& e : shape.entries) {
        if (has(e)) return true;
        all_prefix = all_prefix && e.prefix;
        for (const auto& p : e.params)
            if (std::find(all.begin(), all.end(), p) == all.end()) all.push_back(p);
    }
    if (all_prefix)
        ctx.add(mark, path, what + " needs a route with match.path (every match entry uses match.prefix, which has no parameters)");
    else
        ctx.add(mark, path, quote(name) + " is not a parameter of any match entry's path (parameters: " + join(all) + ")");
    return false;
}

template <typename E>
std::optional<E> read_enum(context& ctx, const field& f, std::string_view what,
                           std::initializer_list<std::pair<std::string_view, E>> values) {
    auto s = read_string(ctx, f);
    if (!s) return std::nullopt;
    std::string expected;
    std::size_t i = 0;
    for (const auto& [name, value] : values) {
        if (*s == name) return value;
        expected += (i == 0 ? "" : i + 1 == values.size() ? " or " : ", ") + std::string(name);
        ++i;
    }
    ctx.add(f.mark(), f.path, "unknown " + std::string(what) + " " + quote(*s) + " (expected " + expected + ")");
    return std::nullopt;
}

// A method used as a key of request.maps or response.success_status: a standard HTTP method,
// and one the route's match entries can receive.
std::optional<std::string> read_route_method(context& ctx, const YAML::Node& key, const std::string& path,
                                             const route_shape& shape) {
    static const std::vector<std::string> standard = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
    if (!key.IsScalar()) {
        ctx.add(key.Mark(), path, std::string("expected an HTTP method, got ") + kind(key));
        return std::nullopt;
    }
    const std::string m = to_upper(key.Scalar());
    const std::string at = child(path, key.Scalar());
    if (std::find(standard.begin(), standard.end(), m) == standard.end()) {
        ctx.add(key.Mark(), at, quote(key.Scalar()) + " is not an HTTP method (expected one of " + join(standard) + ")");
        return std::nullopt;
    }
    if (auto methods = shape.methods(); methods && shape.params_known &&
                                        std::find(methods->begin(), methods->end(), m) == methods->end()) {
        ctx.add(key.Mark(), at, quote(m) + " is not a method this route matches (methods: " + join(*methods) + ")");
        return std::nullopt;
    }
    return m;
}

void load_key(context& ctx, const field& f, value_ref& out, const route_shape& shape) {
    map_reader m(ctx, f.value, f.path, {"path", "query", "header", "body", "generate"});
    if (!m.ok()) return;
    const field* gen = m.get("generate");
    if (gen)
        if (auto v = read_enum<key_generation>(ctx, *gen, "generate",
                                               {{"never", key_generation::never},
                                                {"when_missing", key_generation::when_missing},
                                                {"always", key_generation::always}}))
            out.generate = *v;
    std::vector<const field*> given;
    for (auto k : {"path", "query", "header", "body"})
        if (auto* x = m.get(k)) given.push_back(x);
    if (out.generate == key_generation::always) {
        for (const field* x : given)
            ctx.add(x->key.Mark(), x->path,
                    "generate: always makes up every key, so the key has no source: remove " + x->key.Scalar() +
                        " (or use generate: when_missing)");
        return;
    }
    if (given.size() != 1) {
        ctx.add(m.mark(), f.path, given.empty() ? "give one of path, query, header or body (or generate: always)"
                                                : "give exactly one of path, query, header or body");
        return;
    }
    const field& x = *given.front();
    const std::string src = x.key.Scalar();
    auto s = read_string(ctx, x);
    if (!s) return;
    if (src == "path") {
        out.source = value_source::path;
        if (check_path_param(ctx, *s, x.mark(), x.path, shape, "key.path", false) &&
            out.generate == key_generation::when_missing && shape.in_every_entry(*s))
            ctx.add(gen->mark(), gen->path,
                    "generate: when_missing would never generate a key: every match entry has {" + *s +
                        "} (add a match entry without it, such as the create, or use generate: never)");
    } else if (src == "query") {
        out.source = value_source::query;
        if (s->empty()) ctx.add(x.mark(), x.path, "must name a query parameter");
    } else if (src == "header") {
        out.source = value_source::header;
        if (!is_token(*s)) ctx.add(x.mark(), x.path, "bad header name " + quote(*s));
        *s = to_lower(*s);
    } else {
        out.source = value_source::body;
        if (!is_valid_json_pointer(*s))
            ctx.add(x.mark(), x.path,
                    "bad JSON pointer " + quote(*s) + ": must be \"\" or start with \"/\", and \"~\" must be followed by 0 or 1");
    }
    out.name = *s;
}

void load_partition(context& ctx, const field& f, partition_settings& out, const route_shape& shape) {
    map_reader m(ctx, f.value, f.path, {"path", "query", "headers", "body", "credentials"});
    if (!m.ok()) return;
    if (auto* x = m.get("path")) {
        if (auto list = read_string_list(ctx, *x)) {
            std::size_t i = 0;
            for (const auto& [name, mark] : *list) {
                auto p = x->value.IsSequence() ? index(x->path, i++) : x->path;
                check_path_param(ctx, name, mark, p, shape, "partition.path", true);
                out.path.push_back(name);
            }
        }
    }
    if (auto* x = m.get("query")) {
        if (auto list = read_string_list(ctx, *x))
            for (const auto& [name, mark] : *list) {
                if (name.empty()) ctx.add(mark, x->path, "empty query parameter name");
                out.query.push_back(name);
            }
    }
    if (auto* x = m.get("headers")) {
        if (auto list = read_string_list(ctx, *x))
            for (const auto& [name, mark] : *list) {
                if (!is_token(name)) ctx.add(mark, x->path, "bad header name " + quote(name));
                out.headers.push_back(to_lower(name));
            }
    }
    if (auto* x = m.get("body")) {
        if (auto list = read_string_list(ctx, *x)) {
            std::size_t i = 0;
            for (const auto& [pointer, mark] : *list) {
                auto p = x->value.IsSequence() ? index(x->path, i++) : x->path;
                if (pointer.empty())
                    ctx.add(mark, p, "must name a field of the body, like /period_id (\"\" would be the whole body)");
                else if (!is_valid_json_pointer(pointer))
                    ctx.add(mark, p,
                            "bad JSON pointer " + quote(pointer) + ": must start with \"/\", and \"~\" must be followed by 0 or 1");
                out.body.push_back(pointer);
            }
        }
    }
    if (auto* x = m.get("credentials"))
        if (auto v = read_bool(ctx, *x)) out.credentials = *v;
}

enum class template_kind { batch_path, batch_body, item };

// Where each placeholder may be used (docs/design/write-coalescing.md section 5): batch templates
// only use partition values; {key}, {method}, {body} and {map.NAME} are per caller (item only);
// {items} is for request.body (counted by the caller).
void check_template_uses(context& ctx, const std::vector<placeholder_use>& uses, template_kind where,
                         const partition_settings& part, const route_shape& shape,
                         const std::map<std::string, std::map<std::string, nlohmann::json>>& maps) {
    const char* where_name = where == template_kind::batch_path   ? "request.path"
                             : where == template_kind::batch_body ? "request.body"
                                                                  : "request.item";
    for (const auto& u : uses) {
        if (u.source == "items") {
            if (where == template_kind::batch_path)
                ctx.add(u.mark, u.path, "{items} is only allowed in request.body; query encodings add the keys via query_param");
            else if (where == template_kind::item)
                ctx.add(u.mark, u.path, "{items} is only allowed in request.body (request.item is one element of it)");
            continue;
        }
        const bool per_caller = u.source == "key" || u.source == "method" || u.source == "map" ||
                                (u.source == "body" && u.name.empty());
        if (per_caller) {
            if (where != template_kind::item) {
                ctx.add(u.mark, u.path,
                        u.text() + " is only allowed in request.item: " + where_name +
                            " is shared by every caller of a batch");
            } else if (u.source == "map" && !maps.contains(u.name)) {
                std::vector<std::string> names;
                for (const auto& [n, table] : maps) names.push_back(n);
                ctx.add(u.mark, u.path, u.text() + " names no map of request.maps (defined: " + join(names) + ")");
            }
            continue;
        }
        if (where == template_kind::item) {
            if (u.source == "path") check_path_param(ctx, u.name, u.mark, u.path, shape, "request.item " + u.text(), false);
            continue;
        }
        const std::vector<std::string>* list = nullptr;
        const char* list_name = "";
        if (u.source == "path") list = &part.path, list_name = "partition.path";
        else if (u.source == "query") list = &part.query, list_name = "partition.query";
        else if (u.source == "header") list = &part.headers, list_name = "partition.headers";
        else if (u.source == "body") list = &part.body, list_name = "partition.body";
        else continue;
        if (std::find(list->begin(), list->end(), u.name) == list->end())
            ctx.add(u.mark, u.path,
                    std::string(where_name) + " uses " + u.text() + " but " + list_name +
                        " does not list it: callers with different values would share a batch");
    }
}

void load_maps(context& ctx, const field& f, std::map<std::string, std::map<std::string, nlohmann::json>>& out,
               const route_shape& shape) {
    if (!f.value.IsMap()) {
        ctx.add(f.mark(), f.path, std::string("expected a map of name -> {METHOD: value}, got ") + kind(f.value));
        return;
    }
    for (auto it = f.value.begin(); it != f.value.end(); ++it) {
        if (!it->first.IsScalar()) {
            ctx.add(it->first.Mark(), f.path, std::string("map names must be strings, got ") + kind(it->first));
            continue;
        }
        const std::string name = it->first.Scalar();
        const std::string path = child(f.path, name);
        if (!is_valid_name(name)) ctx.add(it->first.Mark(), path, "bad map name " + quote(name) + " (use A-Z a-z 0-9 _ . -)");
        if (out.contains(name)) {
            ctx.add(it->first.Mark(), path, "duplicate key");
            continue;
        }
        auto& table = out[name];
        const YAML::Node v = it->second;  // a copy: it-> returns a temporary proxy
        if (!v.IsMap() || v.size() == 0) {
            ctx.add(v.IsNull() || v.Mark().is_null() ? it->first.Mark() : v.Mark(), path,
                    std::string("expected a map of HTTP method -> JSON value, like {POST: create, PUT: update}, got ") +
                        (v.IsMap() ? "an empty map" : kind(v)));
            continue;
        }
        for (auto e = v.begin(); e != v.end(); ++e) {
            auto method = read_route_method(ctx, e->first, path, shape);
            if (!method) continue;
            if (table.contains(*method)) {
                ctx.add(e->first.Mark(), child(path, e->first.Scalar()), "duplicate method " + *method);
                continue;
            }
            std::vector<placeholder_use> none;
            table[*method] = yaml_to_json(ctx, e->second, child(path, e->first.Scalar()), none, e->first.Mark(), false);
        }
    }
}

void load_request(context& ctx, const field& f, batch_request_settings& out, const partition_settings& part,
                  const route_shape& shape) {
    map_reader m(ctx, f.value, f.path,
                 {"method", "path", "encoding", "query_param", "separator", "body", "item", "maps", "forward_headers"});
    if (!m.ok()) return;
    if (auto* x = m.get("method"))
        if (auto s = read_string(ctx, *x))
            if (auto meth = read_method(ctx, *s, x->mark(), x->path)) out.method = *meth;
    if (auto* x = m.get("maps")) load_maps(ctx, *x, out.maps, shape);
    if (auto* x = m.required("path")) {
        if (auto s = read_string(ctx, *x)) {
            out.path = *s;
            std::vector<placeholder_use> uses;
            if (s->empty() || s->front() != '/') {
                ctx.add(x->mark(), x->path, "must start with \"/\"");
            } else if (auto err = scan_placeholders(*s, x->mark(), x->path, uses)) {
                ctx.add(x->mark(), x->path, "bad template " + quote(*s) + ": " + *err);
            } else {
                check_template_uses(ctx, uses, template_kind::batch_path, part, shape, out.maps);
            }
        }
    }
    bool have_encoding = false;
    if (auto* x = m.required("encoding")) {
        if (auto s = read_string(ctx, *x)) {
            have_encoding = true;
            if (*s == "query_list") out.encoding = batch_encoding::query_list;
            else if (*s == "query_repeat") out.encoding = batch_encoding::query_repeat;
            else if (*s == "json_body") out.encoding = batch_encoding::json_body;
            else {
                have_encoding = false;
                ctx.add(x->mark(), x->path, "unknown encoding " + quote(*s) + " (expected query_list, query_repeat or json_body)");
            }
        }
    }
    const bool is_query = out.encoding != batch_encoding::json_body;
    const field* qp = m.get("query_param");
    const field* sep = m.get("separator");
    const field* body = m.get("body");
    const field* item = m.get("item");
    const field* maps = m.get("maps");
    if (qp) {
        if (auto s = read_string(ctx, *qp)) {
            out.query_param = *s;
            if (s->empty()) ctx.add(qp->mark(), qp->path, "must not be empty");
        }
    }
    if (sep) {
        if (auto s = read_string(ctx, *sep)) {
            out.separator = *s;
            if (s->empty()) ctx.add(sep->mark(), sep->path, "must not be empty");
        }
    }
    if (body) {
        std::vector<placeholder_use> uses;
        out.body_template = yaml_to_json(ctx, body->value, body->path, uses, body->key.Mark());
        check_template_uses(ctx, uses, template_kind::batch_body, part, shape, out.maps);
        auto items = std::count_if(uses.begin(), uses.end(), [](const auto& u) { return u.source == "items"; });
        if (have_encoding && !is_query && items != 1)
            ctx.add(body->mark(), body->path,
                    items == 0 ? "must contain \"{items}\" once, as a whole string value: it is replaced by the JSON array of items"
                               : "\"{items}\" appears " + std::to_string(items) + " times; it must appear exactly once");
    }
    if (item) {
        std::vector<placeholder_use> uses;
        out.item = yaml_to_json(ctx, item->value, item->path, uses, item->key.Mark());
        check_template_uses(ctx, uses, template_kind::item, part, shape, out.maps);
    }
    if (!have_encoding) return;
    if (is_query) {
        if (!qp) ctx.add(m.mark(), child(f.path, "query_param"), "required key is missing for encoding query_list / query_repeat");
        if (body) ctx.add(body->key.Mark(), body->path, "body is only used with encoding: json_body");
        if (item) ctx.add(item->key.Mark(), item->path, "item is only used with encoding: json_body (query encodings send the keys)");
        if (maps) ctx.add(maps->key.Mark(), maps->path, "maps is only used with encoding: json_body (by request.item)");
        if (sep && out.encoding == batch_encoding::query_repeat)
            ctx.add(sep->key.Mark(), sep->path, "separator is only used with encoding: query_list");
    } else {
        if (!body) ctx.add(m.mark(), child(f.path, "body"), "required key is missing for encoding json_body");
        if (qp) ctx.add(qp->key.Mark(), qp->path, "query_param is only used with query_list / query_repeat");
        if (sep) ctx.add(sep->key.Mark(), sep->path, "separator is only used with encoding: query_list");
    }
    if (auto* x = m.get("forward_headers")) {
        if (auto list = read_string_list(ctx, *x))
            for (const auto& [name, mark] : *list) {
                if (!is_token(name)) ctx.add(mark, x->path, "bad header name " + quote(name));
                const std::string lower = to_lower(name);
                // One batch call carries one value for all its callers: only a header they
                // all share (a partition header) may go on it.
                const bool shared = std::find(part.headers.begin(), part.headers.end(), lower) != part.headers.end() ||
                                    (part.credentials && (lower == "authorization" || lower == "cookie"));
                if (!shared)
                    ctx.add(mark, x->path,
                            quote(name) + " is not in partition.headers: callers with different values would "
                                          "share one batch call (add it there; partition headers are forwarded anyway)");
                out.forward_headers.push_back(lower);
            }
    }
}

void read_status_map(context& ctx, const field& x, std::map<std::string, int>& out) {
    if (!x.value.IsMap()) {
        ctx.add(x.mark(), x.path, std::string("expected a map of status value -> HTTP status, got ") + kind(x.value));
        return;
    }
    for (auto it = x.value.begin(); it != x.value.end(); ++it) {
        if (!it->first.IsScalar()) {
            ctx.add(it->first.Mark(), x.path, "status values must be strings");
            continue;
        }
        const std::string k = it->first.Scalar();
        if (out.count(k)) {
            ctx.add(it->first.Mark(), child(x.path, k), "duplicate key");
            continue;
        }
        field entry{it->first, it->second, child(x.path, k)};
        if (auto v = read_int(ctx, entry, 200, 599)) out[k] = static_cast<int>(*v);
    }
}

// key: one JSON pointer or a list of them (the first present wins).
void read_key_pointers(context& ctx, const field& f, std::vector<std::string>& out) {
    if (f.value.IsSequence()) {
        if (f.value.size() == 0) ctx.add(f.mark(), f.path, "must list at least one JSON pointer");
        std::size_t i = 0;
        for (const auto& n : f.value) {
            field entry{f.key, n, index(f.path, i++)};
            if (auto v = read_pointer(ctx, entry, true)) out.push_back(*v);
        }
        return;
    }
    if (auto v = read_pointer(ctx, f, true)) out.push_back(*v);
}

// One result list: the single-list form (single = true: "status" is a pointer) or lists[i].
void load_result_list(context& ctx, const map_reader& m, const std::string& path, result_list& out, bool single) {
    if (auto* x = m.get("items"))
        if (auto v = read_pointer(ctx, *x, true)) out.items = *v;
    if (auto* x = m.get("by_position"))
        if (auto v = read_bool(ctx, *x)) out.by_position = *v;
    const field* key = m.get("key");
    if (key) {
        read_key_pointers(ctx, *key, out.key);
        if (out.by_position) ctx.add(key->key.Mark(), key->path, "give either key or by_position: true, not both");
    } else if (!out.by_position) {
        ctx.add(m.mark(), child(path, "key"), "required key is missing (or set by_position: true)");
    }
    const field* status_code = m.get("status_code");
    if (status_code)
        if (auto v = read_pointer(ctx, *status_code, false)) out.status_code = *v;
    const field* status = m.get("status");
    const field* status_field = single ? status : m.get("status_field");
    if (single) {
        if (status)
            if (auto v = read_pointer(ctx, *status, false)) out.status_field = *v;
    } else {
        if (status_field)
            if (auto v = read_pointer(ctx, *status_field, false)) out.status_field = *v;
        if (status) {
            if (auto v = read_int(ctx, *status, 200, 599)) out.status = static_cast<int>(*v);
            if (status_code || status_field)
                ctx.add(status->key.Mark(), status->path,
                        "give either a fixed status or status_code / status_field, not both");
        }
    }
    if (auto* x = m.get("status_map")) {
        if (!status_field)
            ctx.add(x->key.Mark(), x->path, single ? "status_map has no effect without status" : "status_map has no effect without status_field");
        read_status_map(ctx, *x, out.status_map);
    }
    const field* body = m.get("body");
    if (body)
        if (auto v = read_pointer(ctx, *body, true)) out.body = *v;
    if (auto* x = m.get("body_value")) {
        std::vector<placeholder_use> none;
        out.body_value = yaml_to_json(ctx, x->value, x->path, none, x->key.Mark(), false);
        if (body) ctx.add(x->key.Mark(), x->path, "give either body or body_value, not both");
    }
    if (auto* x = m.get("error"))
        if (auto v = read_pointer(ctx, *x, false)) out.error = *v;
}

void load_response(context& ctx, const field& f, batch_response_settings& out, const route_shape& shape) {
    static constexpr std::string_view single_keys[] = {
        "items", "key", "by_position", "status_code", "status", "status_map", "body", "body_value", "error"};
    map_reader m(ctx, f.value, f.path,
                 {"items", "key", "by_position", "status_code", "status", "status_map", "body", "body_value", "error",
                  "lists", "missing_status", "success_status"});
    if (!m.ok()) return;
    if (const field* lists = m.get("lists")) {
        for (auto k : single_keys)
            if (const field* x = m.get(k))
                ctx.add(x->key.Mark(), x->path,
                        "give either lists or the single-list keys, not both (move " + std::string(k) +
                            " into an entry of lists)");
        if (!lists->value.IsSequence() || lists->value.size() == 0) {
            ctx.add(lists->mark(), lists->path,
                    std::string("expected a non-empty list of result lists, got ") +
                        (lists->value.IsSequence() ? "an empty list" : kind(lists->value)));
        } else {
            std::size_t i = 0;
            for (const auto& node : lists->value) {
                const std::string path = index(lists->path, i++);
                map_reader lm(ctx, node, path,
                              {"items", "key", "by_position", "status", "status_code", "status_field", "status_map", "body",
                               "body_value", "error"});
                if (!lm.ok()) continue;
                result_list list;
                load_result_list(ctx, lm, path, list, false);
                if (list.by_position && lists->value.size() > 1)
                    if (const field* x = lm.get("by_position"))
                        ctx.add(x->key.Mark(), x->path, "by_position needs exactly one result list");
                out.lists.push_back(std::move(list));
            }
        }
    } else {
        result_list list;
        load_result_list(ctx, m, f.path, list, true);
        out.lists.push_back(std::move(list));
    }
    if (auto* x = m.get("missing_status"))
        if (auto v = read_int(ctx, *x, 200, 599)) out.missing_status = static_cast<int>(*v);
    if (auto* x = m.get("success_status")) {
        if (!x->value.IsMap()) {
            ctx.add(x->mark(), x->path, std::string("expected a map of HTTP method -> status, like {POST: 201}, got ") + kind(x->value));
        } else {
            for (auto it = x->value.begin(); it != x->value.end(); ++it) {
                auto method = read_route_method(ctx, it->first, x->path, shape);
                if (!method) continue;
                field entry{it->first, it->second, child(x->path, it->first.Scalar())};
                if (out.success_status.contains(*method)) {
                    ctx.add(it->first.Mark(), entry.path, "duplicate method " + *method);
                    continue;
                }
                if (auto v = read_int(ctx, entry, 200, 599)) out.success_status[*method] = static_cast<int>(*v);
            }
        }
    }
}

void load_retry(context& ctx, const field& f, retry_settings& out) {
    map_reader m(ctx, f.value, f.path, {"statuses", "max_attempts", "initial_backoff", "max_backoff"});
    if (!m.ok()) return;
    if (auto* x = m.get("statuses")) {
        out.statuses.clear();
        if (x->value.IsSequence()) {
            std::size_t i = 0;
            for (const auto& n : x->value) {
                field entry{x->key, n, index(x->path, i++)};
                if (auto v = read_int(ctx, entry, 100, 599)) out.statuses.push_back(static_cast<int>(*v));
            }
        } else if (auto v = read_int(ctx, *x, 100, 599)) {
            out.statuses.push_back(static_cast<int>(*v));
        }
    }
    if (auto* x = m.get("max_attempts"))
        if (auto v = read_int(ctx, *x, 1, 20)) out.max_attempts = static_cast<unsigned>(*v);
    const field* initial = m.get("initial_backoff");
    if (initial)
        if (auto v = read_duration(ctx, *initial, false)) out.initial_backoff = *v;
    if (auto* x = m.get("max_backoff")) {
        if (auto v = read_duration(ctx, *x, false)) {
            out.max_backoff = *v;
            if (out.max_backoff < out.initial_backoff)
                ctx.add(x->mark(), x->path,
                        "must be at least initial_backoff (" + std::to_string(out.initial_backoff.count()) + "ms)");
        }
    }
}

void load_coalesce(context& ctx, const field& f, coalesce_settings& out, const route_shape& shape) {
    map_reader m(ctx, f.value, f.path,
                 {"key", "on_missing_key", "partition", "same_key", "ordered", "max_batch_items", "max_batch_bytes",
                  "max_wait", "max_concurrent_batches", "max_waiting", "request", "response", "on_batch_error", "retry"});
    if (!m.ok()) return;
    if (auto* x = m.required("key")) load_key(ctx, *x, out.key, shape);
    if (auto* x = m.get("on_missing_key"))
        if (auto v = read_enum<missing_key_action>(ctx, *x, "on_missing_key",
                                                   {{"reject", missing_key_action::reject},
                                                    {"passthrough", missing_key_action::passthrough}}))
            out.on_missing_key = *v;
    if (auto* x = m.get("partition")) load_partition(ctx, *x, out.partition, shape);
    out.same_key = shape.read_only() ? same_key_policy::share : same_key_policy::sequence;
    const field* same_key = m.get("same_key");
    if (same_key)
        if (auto v = read_enum<same_key_policy>(ctx, *same_key, "same_key",
                                                {{"share", same_key_policy::share},
                                                 {"sequence", same_key_policy::sequence},
                                                 {"last_write_wins", same_key_policy::last_write_wins},
                                                 {"merge_patch", same_key_policy::merge_patch}}))
            out.same_key = *v;
    out.ordered = out.same_key != same_key_policy::share;
    if (auto* x = m.get("ordered"))
        if (auto v = read_bool(ctx, *x)) out.ordered = *v;
    if (auto* x = m.get("max_batch_items"))
        if (auto v = read_count(ctx, *x, 1, 10000)) out.max_batch_items = *v;
    if (auto* x = m.get("max_batch_bytes"))
        if (auto v = read_size(ctx, *x, true)) out.max_batch_bytes = *v;
    if (auto* x = m.get("max_wait"))
        if (auto v = read_duration(ctx, *x, true)) out.max_wait = *v;
    if (auto* x = m.get("max_concurrent_batches"))
        if (auto v = read_count(ctx, *x, 1)) out.max_concurrent_batches = *v;
    if (auto* x = m.get("max_waiting"))
        if (auto v = read_count(ctx, *x, 1)) out.max_waiting = *v;
    const field* request = m.required("request");
    if (request) load_request(ctx, *request, out.request, out.partition, shape);

    if (auto* x = m.required("response")) load_response(ctx, *x, out.response, shape);
    if (auto* x = m.get("on_batch_error"))
        if (auto v = read_enum<batch_error_policy>(ctx, *x, "on_batch_error",
                                                   {{"fail_all", batch_error_policy::fail_all},
                                                    {"isolate", batch_error_policy::isolate}}))
            out.on_batch_error = *v;
    if (auto* x = m.get("retry")) load_retry(ctx, *x, out.retry);
    // Query encodings put every key in the request line, which most servers cap at 8 KiB:
    // bound it unless the route sets its own limit.
    if (request && out.max_batch_bytes == 0 && out.request.encoding != batch_encoding::json_body)
        out.max_batch_bytes = default_query_batch_bytes;
    if (same_key && out.same_key == same_key_policy::merge_patch && request &&
        out.request.encoding != batch_encoding::json_body) {
        ctx.add(same_key->mark(), same_key->path,
                "merge_patch needs encoding: json_body (query encodings send only keys, there is no payload to merge)");
    }
}

// ---------------------------------------------------------------------------------------
// fan_out and batch_envelope (README: Fan-out)

// A JSON template (no coalesce placeholders) whose placeholders are checked against rules.
nlohmann::json read_fanout_template(context& ctx, const field& f, const fanout::placeholder_rules& rules) {
    std::vector<placeholder_use> unused;
    nlohmann::json j = yaml_to_json(ctx, f.value, f.path, unused, f.mark(), false);
    if (auto err = fanout::check_json(j, rules)) ctx.add(f.mark(), f.path, *err);
    return j;
}

// NAME -> text template (query parameters, headers).
std::vector<std::pair<std::string, std::string>> read_text_templates(context& ctx, const field& f, bool lower_names) {
    std::vector<std::pair<std::string, std::string>> out;
    if (!f.value.IsMap()) {
        ctx.add(f.mark(), f.path, std::string("expected a map of name: template, got ") + kind(f.value));
        return out;
    }
    for (auto it = f.value.begin(); it != f.value.end(); ++it) {
        if (!it->first.IsScalar()) continue;
        field entry{it->first, it->second, child(f.path, it->first.Scalar())};
        std::string name = lower_names ? to_lower(it->first.Scalar()) : it->first.Scalar();
        if (lower_names && !is_token(name)) ctx.add(entry.key.Mark(), entry.path, "bad header name " + quote(name));
        if (auto v = read_string(ctx, entry)) {
            if (auto err = fanout::check_text(*v, fanout::request_rules())) ctx.add(entry.mark(), entry.path, *err);
            out.emplace_back(std::move(name), *v);
        }
    }
    return out;
}

void load_fan_out_request(context& ctx, const field& f, fan_out_request_settings& out) {
    map_reader m(ctx, f.value, f.path, {"method", "path", "query", "headers", "body", "forward_headers"});
    if (!m.ok()) return;
    if (auto* x = m.get("method"))
        if (auto s = read_string(ctx, *x))
            if (auto v = read_method(ctx, *s, x->mark(), x->path)) out.method = *v;
    if (auto* x = m.required("path")) {
        if (auto s = read_string(ctx, *x)) {
            out.path = *s;
            if (s->empty() || s->front() != '/') ctx.add(x->mark(), x->path, "must start with \"/\"");
            if (auto err = fanout::check_text(*s, fanout::request_rules())) ctx.add(x->mark(), x->path, *err);
        }
    }
    if (auto* x = m.get("query")) out.query = read_text_templates(ctx, *x, false);
    if (auto* x = m.get("headers"))
        for (auto& [k, v] : read_text_templates(ctx, *x, true)) out.headers[k] = v;
    if (auto* x = m.get("body")) out.body = read_fanout_template(ctx, *x, fanout::request_rules());
    if (auto* x = m.get("forward_headers")) {
        if (auto list = read_string_list(ctx, *x)) {
            out.forward_headers.clear();
            for (const auto& [h, mark] : *list) {
                if (!is_token(h)) ctx.add(mark, x->path, "bad header name " + quote(h));
                out.forward_headers.push_back(to_lower(h));
            }
        }
    }
}

void load_fan_out(context& ctx, const field& f, fan_out_settings& out) {
    map_reader m(ctx, f.value, f.path,
                 {"items", "min_items", "max_items", "require", "request", "concurrency", "item_timeout", "timeout",
                  "response"});
    if (!m.ok()) return;
    if (auto* x = m.required("items"))
        if (auto p = read_pointer(ctx, *x, true)) out.items = *p;
    const field* min = m.get("min_items");
    if (min)
        if (auto v = read_count(ctx, *min, 0, 10000)) out.min_items = *v;
    if (auto* x = m.get("max_items")) {
        if (auto v = read_count(ctx, *x, 1, 10000)) {
            out.max_items = *v;
            if (out.max_items < out.min_items)
                ctx.add(x->mark(), x->path, "must be at least min_items (" + std::to_string(out.min_items) + ")");
        }
    }
    if (auto* x = m.get("require")) {
        if (!x->value.IsMap()) {
            ctx.add(x->mark(), x->path, std::string("expected a map of JSON pointer: value, got ") + kind(x->value));
        } else {
            for (auto it = x->value.begin(); it != x->value.end(); ++it) {
                if (!it->first.IsScalar()) continue;
                field entry{it->first, it->second, child(x->path, it->first.Scalar())};
                const std::string ptr = it->first.Scalar();
                if (ptr.empty() || ptr.front() != '/' || !is_valid_json_pointer(ptr))
                    ctx.add(entry.key.Mark(), entry.path, "keys are JSON pointers into the request body, e.g. /resource_type");
                std::vector<placeholder_use> unused;
                out.require.emplace_back(ptr, yaml_to_json(ctx, it->second, entry.path, unused, entry.mark(), false));
            }
        }
    }
    if (auto* x = m.required("request")) load_fan_out_request(ctx, *x, out.request);
    if (auto* x = m.get("concurrency"))
        if (auto v = read_count(ctx, *x, 1, 1000)) out.concurrency = *v;
    if (auto* x = m.get("item_timeout"))
        if (auto v = read_duration(ctx, *x, false)) out.item_timeout = *v;
    if (auto* x = m.get("timeout"))
        if (auto v = read_duration(ctx, *x, false)) out.timeout = *v;
    if (auto* x = m.get("response")) {
        map_reader r(ctx, x->value, x->path, {"success", "error", "envelope"});
        if (r.ok()) {
            if (auto* y = r.get("success")) out.response.success = read_fanout_template(ctx, *y, fanout::item_rules());
            if (auto* y = r.get("error")) out.response.error = read_fanout_template(ctx, *y, fanout::item_rules());
            if (auto* y = r.get("envelope"))
                out.response.envelope = read_fanout_template(ctx, *y, fanout::envelope_rules());
        }
    }
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

void load_batch_envelope(context& ctx, const field& f, batch_envelope_settings& out) {
    map_reader m(ctx, f.value, f.path, {"max_requests", "concurrency", "timeout"});
    if (!m.ok()) return;
    if (auto* x = m.get("max_requests"))
        if (auto v = read_count(ctx, *x, 1, 100)) out.max_requests = *v;
    if (auto* x = m.get("concurrency"))
        if (auto v = read_count(ctx, *x, 1, 100)) out.concurrency = *v;
    if (auto* x = m.get("timeout"))
        if (auto v = read_duration(ctx, *x, false)) out.timeout = *v;
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
                     {"name", "match", "upstream", "mode", "timeout", "coalesce", "fan_out", "batch_envelope"});
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
        if (mode_known) {
            if (r.mode == route_mode::coalesce) {
                if (!co) ctx.add(m.mark(), child(path, "coalesce"), "required key is missing for mode: coalesce");
                else load_coalesce(ctx, *co, r.coalesce, shape);
            } else if (co) {
                ctx.add(co->key.Mark(), co->path,
                        "coalesce settings given but mode is " + mode_name(r.mode) + " (add mode: coalesce)");
            }
            const field* fo = m.get("fan_out");
            if (r.mode == route_mode::fan_out) {
                if (!fo) ctx.add(m.mark(), child(path, "fan_out"), "required key is missing for mode: fan_out");
                else load_fan_out(ctx, *fo, r.fan_out);
                if (r.timeout.count() == 0) r.timeout = r.fan_out.timeout + std::chrono::seconds(1);
            } else if (fo) {
                ctx.add(fo->key.Mark(), fo->path, "fan_out settings given but mode is " + mode_name(r.mode) + " (add mode: fan_out)");
            }
            const field* be = m.get("batch_envelope");
            if (r.mode == route_mode::batch_envelope) {
                if (be) load_batch_envelope(ctx, *be, r.batch_envelope);
                if (r.timeout.count() == 0) r.timeout = r.batch_envelope.timeout + std::chrono::seconds(1);
            } else if (be) {
                ctx.add(be->key.Mark(), be->path,
                        "batch_envelope settings given but mode is " + mode_name(r.mode) +
                            " (add mode: batch_envelope)");
            }
        }
        cfg.routes.push_back(std::move(r));
    }
}

gateway_config load_tree(context& ctx, const YAML::Node& root) {
    gateway_config cfg;
    cfg.source_file = ctx.file;
    // Built, never assigned: assigning a YAML::Node rewrites the tree it referred to.
    const YAML::Node doc = root.IsNull() ? YAML::Node(YAML::NodeType::Map) : root;  // empty file: report what is missing
    map_reader m(ctx, doc, "", {"listen", "admin_listen", "worker_threads", "logging", "limits", "upstreams", "routes"});
    if (!m.ok()) return cfg;
    if (auto* x = m.get("listen"))
        if (auto e = read_endpoint(ctx, *x)) cfg.listen = *e;
    if (auto* x = m.get("admin_listen"))
        if (auto e = read_endpoint(ctx, *x)) cfg.admin_listen = *e;
    if (cfg.listen.port != 0 && cfg.listen.port == cfg.admin_listen.port && cfg.listen.host == cfg.admin_listen.host) {
        auto* x = m.get("admin_listen") ? m.get("admin_listen") : m.get("listen");
        if (x) ctx.add(x->mark(), x->path, "listen and admin_listen must be different addresses");
    }
    if (auto* x = m.get("worker_threads"))
        if (auto v = read_int(ctx, *x, 0, 256)) cfg.worker_threads = static_cast<unsigned>(*v);
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
