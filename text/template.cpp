#include "text/template.hpp"

#include <charconv>

#include "text/json_pointer.hpp"
#include "text/json_text.hpp"
#include "text/url.hpp"

namespace batchgate::fanout {

namespace {

struct placeholder {
    std::string_view name;
    std::string_view type;  // "" = none
};

placeholder split(std::string_view inner) {
    // The type suffix follows the last ':' only when it is a known type, so pointers keep colons.
    if (auto colon = inner.rfind(':'); colon != std::string_view::npos) {
        auto t = inner.substr(colon + 1);
        if (t == "int" || t == "number" || t == "bool" || t == "string" || t == "json")
            return {inner.substr(0, colon), t};
    }
    return {inner, {}};
}

// Applies a ":type" conversion; nullopt with error set when it does not convert.
std::optional<json> convert(json v, std::string_view type, std::string_view name, std::string& error) {
    auto fail = [&](const char* what) -> std::optional<json> {
        // Appended, not `"{" + std::string(name)`: GCC 12 at -O3 warns (-Wrestrict, its bug 105329).
        error.assign(1, '{').append(name).append(1, ':').append(type).append("}: ").append(what).append(", got ");
        error += v.dump(-1, ' ', false, json::error_handler_t::replace);
        return std::nullopt;
    };
    if (type.empty() || type == "json") {
        if (type == "json" && v.is_string()) {
            auto parsed = routes::parse_json(v.get<std::string>());
            if (!parsed.ok()) return fail(parsed.status == routes::json_status::too_deep ? "nested too deep" : "not JSON text");
            return std::move(parsed.value);
        }
        return v;
    }
    if (type == "string") return json(text_of(v));
    if (type == "bool") {
        if (v.is_boolean()) return v;
        if (v == "true") return json(true);
        if (v == "false") return json(false);
        return fail("not a boolean");
    }
    if (type == "int") {
        if (v.is_number_integer()) return v;
        if (v.is_number_float()) {
            if (auto n = routes::whole_int64(v.get<double>())) return json(*n);
            return fail("not a whole number");
        }
        if (v.is_string()) {
            const auto& s = v.get_ref<const std::string&>();
            long long n = 0;
            auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
            if (!s.empty() && ec == std::errc{} && p == s.data() + s.size()) return json(n);
        }
        return fail("not a whole number");
    }
    // number
    if (v.is_number()) return v;
    if (v.is_string()) {
        auto parsed = routes::parse_json(v.get<std::string>(), 0);
        if (parsed.ok() && parsed.value.is_number()) return std::move(parsed.value);
    }
    return fail("not a number");
}

// The string is exactly one placeholder: "{...}".
bool is_lone(std::string_view s) {
    return s.size() > 2 && s.front() == '{' && s.back() == '}' && s.find_first_of("{}", 1) == s.size() - 1;
}

std::optional<json> resolve_one(std::string_view inner, const resolver& resolve, std::string& error) {
    auto p = split(inner);
    auto v = resolve(p.name);
    if (!v) return std::nullopt;
    return convert(std::move(*v), p.type, p.name, error);
}

}  // namespace

std::string text_of(const json& v) {
    if (v.is_string()) return v.get<std::string>();
    if (v.is_null()) return {};
    return v.dump(-1, ' ', false, json::error_handler_t::replace);
}

text_result render_text(std::string_view tmpl, const resolver& resolve, bool url_encode) {
    text_result out;
    if (is_lone(tmpl)) {
        auto v = resolve_one(tmpl.substr(1, tmpl.size() - 2), resolve, out.error);
        if (!out.error.empty() || !v || v->is_null()) return out;
        out.text = url_encode ? routes::url_encode(text_of(*v)) : text_of(*v);
        return out;
    }
    std::string text;
    std::size_t i = 0;
    while (i < tmpl.size()) {
        auto open = tmpl.find('{', i);
        auto close = open == std::string_view::npos ? open : tmpl.find('}', open + 1);
        if (close == std::string_view::npos) break;
        text.append(tmpl.substr(i, open - i));
        auto v = resolve_one(tmpl.substr(open + 1, close - open - 1), resolve, out.error);
        if (!out.error.empty()) return out;
        if (v) text += url_encode ? routes::url_encode(text_of(*v)) : text_of(*v);
        i = close + 1;
    }
    if (i < tmpl.size()) text.append(tmpl.substr(i));
    out.text = std::move(text);
    return out;
}

render_result render_json(const json& tmpl, const resolver& resolve) {
    render_result out;
    if (tmpl.is_string()) {
        const auto& s = tmpl.get_ref<const std::string&>();
        if (is_lone(s)) {
            out.value = resolve_one(std::string_view(s).substr(1, s.size() - 2), resolve, out.error);
            return out;
        }
        if (s.find('{') == std::string::npos) {
            out.value = tmpl;
            return out;
        }
        auto t = render_text(s, resolve, false);
        out.error = std::move(t.error);
        if (t.text) out.value = json(std::move(*t.text));
        return out;
    }
    if (tmpl.is_object()) {
        json obj = json::object();
        for (auto it = tmpl.begin(); it != tmpl.end(); ++it) {
            auto r = render_json(it.value(), resolve);
            if (!r.error.empty()) return r;
            if (r.value) obj[it.key()] = std::move(*r.value);
        }
        out.value = std::move(obj);
        return out;
    }
    if (tmpl.is_array()) {
        json arr = json::array();
        for (const auto& e : tmpl) {
            auto r = render_json(e, resolve);
            if (!r.error.empty()) return r;
            if (r.value) arr.push_back(std::move(*r.value));
        }
        out.value = std::move(arr);
        return out;
    }
    out.value = tmpl;
    return out;
}

std::optional<std::string> check_text(std::string_view s, const placeholder_rules& rules) {
    std::size_t pos = 0;
    while (pos < s.size()) {
        std::size_t open = s.find_first_of("{}", pos);
        if (open == std::string_view::npos) break;
        if (s[open] == '}') return "unmatched \"}\" in \"" + std::string(s) + "\"";
        std::size_t close = s.find_first_of("{}", open + 1);
        if (close == std::string_view::npos || s[close] == '{') return "unmatched \"{\" in \"" + std::string(s) + "\"";
        const std::string_view whole = s.substr(open + 1, close - open - 1);
        if (auto colon = whole.rfind(':'); colon != std::string_view::npos && whole.find('/') == std::string_view::npos) {
            auto t = whole.substr(colon + 1);
            if (t != "int" && t != "number" && t != "bool" && t != "string" && t != "json")
                return "unknown type suffix \":" + std::string(t) + "\" in {" + std::string(whole) +
                       "}: use :int, :number, :bool, :string or :json";
        }
        const std::string_view name = split(whole).name;
        bool ok = false;
        for (const auto& e : rules.exact) ok = ok || name == e;
        for (const auto& prefix : rules.prefixes) {
            if (ok || !name.starts_with(prefix) || name.size() == prefix.size()) continue;
            auto rest = name.substr(prefix.size());
            if (rest.front() == '/' || prefix == "body." || prefix == "item." || prefix == "response.") {
                if (!routes::json_pointer::parse(rest) || rest.front() != '/')
                    return "bad JSON pointer \"" + std::string(rest) + "\" in {" + std::string(whole) + "}";
            }
            ok = true;
        }
        if (!ok) {
            std::string allowed;
            for (const auto& e : rules.exact) allowed += (allowed.empty() ? "{" : ", {") + e + "}";
            for (const auto& p : rules.prefixes)
                allowed += (allowed.empty() ? "{" : ", {") + p +
                           (p == "header." || p == "path." || p == "query." ? "NAME}" : "/POINTER}");
            return "unknown placeholder {" + std::string(whole) + "} here: use " + allowed;
        }
        pos = close + 1;
    }
    return std::nullopt;
}

std::optional<std::string> check_json(const json& tmpl, const placeholder_rules& rules) {
    if (tmpl.is_string()) return check_text(tmpl.get_ref<const std::string&>(), rules);
    if (tmpl.is_structured())
        for (const auto& e : tmpl)
            if (auto err = check_json(e, rules)) return err;
    return std::nullopt;
}

}  // namespace batchgate::fanout
