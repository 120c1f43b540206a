// The shared pieces of the config loader (config/load_context.hpp): text helpers, the map
// reader's helpers, the typed scalar readers, YAML -> JSON and the placeholder scan.
#include "config/load_context.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "config/loader.hpp"

namespace batchgate::config::detail {

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
    // Appended, not `"\"" + std::string(s)`: GCC 12 at -O3 warns (-Wrestrict) on that (its bug 105329).
    std::string quoted;
    quoted.reserve(s.size() + 2);
    quoted.append(1, '"').append(s).append(1, '"');
    return quoted;
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

namespace {

std::string range_text(long long min, long long max) {
    if (max == std::numeric_limits<long long>::max()) return "must be at least " + std::to_string(min);
    return "must be between " + std::to_string(min) + " and " + std::to_string(max);
}

}  // namespace

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
                                      long long max) {
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

// ---------------------------------------------------------------------------------------
// YAML -> JSON for request.body, plus the placeholder checks on its strings.

namespace {

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

bool is_type_suffix(std::string_view t) {
    return t == "int" || t == "number" || t == "bool" || t == "string" || t == "json";
}

}  // namespace

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
                            std::vector<placeholder_use>& uses, const YAML::Mark& fallback, bool templates) {
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

}  // namespace batchgate::config::detail
