#include "text/json_text.hpp"

namespace batchgate::routes {

namespace {

constexpr std::size_t npos = std::string_view::npos;

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

std::size_t skip_space(std::string_view t, std::size_t i) {
    while (i < t.size() && is_space(t[i])) ++i;
    return i;
}

// Just past the string that opens at t[i] ('"').
std::size_t string_end(std::string_view t, std::size_t i) {
    for (++i; i < t.size(); ++i) {
        if (t[i] == '\\')
            ++i;  // the escaped character, which may be a quote
        else if (t[i] == '"')
            return i + 1;
    }
    return npos;
}

// Calls stop(c) for each byte of text outside its strings, in order, until it returns true; true
// when it did. An unterminated string ends the scan.
template <class Stop>
bool any_outside_strings(std::string_view text, Stop stop) {
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '"') {
            i = string_end(text, i);
            if (i == npos) return false;
            --i;  // the loop steps past the closing quote
        } else if (stop(text[i])) {
            return true;
        }
    }
    return false;
}

}  // namespace

bool json_too_deep(std::string_view text, std::size_t max_depth) {
    std::size_t depth = 0;
    return any_outside_strings(text, [&depth, max_depth](char c) {
        if (c == '[' || c == '{') return ++depth > max_depth;
        if ((c == ']' || c == '}') && depth) --depth;
        return false;
    });
}

namespace {

// Why nlohmann refused a text, read from its exception's id without throwing it.
struct refusal final : nlohmann::json_sax<nlohmann::json> {
    int id = 0;
    bool null() override { return true; }
    bool boolean(bool) override { return true; }
    bool number_integer(number_integer_t) override { return true; }
    bool number_unsigned(number_unsigned_t) override { return true; }
    bool number_float(number_float_t, const string_t&) override { return true; }
    bool string(string_t&) override { return true; }
    bool binary(binary_t&) override { return true; }
    bool start_object(std::size_t) override { return true; }
    bool key(string_t&) override { return true; }
    bool end_object() override { return true; }
    bool start_array(std::size_t) override { return true; }
    bool end_array() override { return true; }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
        id = e.id;
        return false;
    }
};

}  // namespace

parsed_json parse_json(std::string_view text, std::size_t max_depth) {
    parsed_json out;
    if (json_too_deep(text, max_depth)) {
        out.value = nlohmann::json(nlohmann::json::value_t::discarded);
        out.status = json_status::too_deep;
        return out;
    }
    // nlohmann ends its input at a NUL byte ("[1]\0junk" parses), but JSON has no NUL outside a
    // string and none unescaped inside one (RFC 8259 sections 2 and 7): such a text is invalid.
    if (text.find('\0') != std::string_view::npos) {
        out.value = nlohmann::json(nlohmann::json::value_t::discarded);
        out.status = json_status::invalid;
        return out;
    }
    out.value = nlohmann::json::parse(text, nullptr, false);
    if (!out.value.is_discarded()) {
        out.status = json_status::ok;
    } else {
        refusal why;  // a refused text only: read again, to tell a number too large (406) from the rest
        nlohmann::json::sax_parse(text, &why);
        out.status = why.id == 406 ? json_status::out_of_range : json_status::invalid;
    }
    return out;
}

namespace {

// Just past the value that starts at t[i].
std::size_t value_end(std::string_view t, std::size_t i) {
    if (i >= t.size()) return npos;
    if (t[i] == '"') return string_end(t, i);
    if (t[i] == '{' || t[i] == '[') {
        std::size_t depth = 0;
        while (i < t.size()) {
            const char c = t[i];
            if (c == '"') {
                i = string_end(t, i);
                if (i == npos) return npos;
                continue;
            }
            if (c == '{' || c == '[') ++depth;
            else if ((c == '}' || c == ']') && --depth == 0) return i + 1;
            ++i;
        }
        return npos;
    }
    // A number or a literal: up to the next delimiter.
    while (i < t.size() && !is_space(t[i]) && t[i] != ',' && t[i] != ']' && t[i] != '}') ++i;
    return i;
}

// Calls f(text) for each element of the array `t` (its whole text) until f returns false.
template <class F>
bool each_element(std::string_view t, F&& f) {
    if (t.size() < 2 || t.front() != '[') return false;
    std::size_t i = skip_space(t, 1);
    if (i < t.size() && t[i] == ']') return true;
    while (i < t.size()) {
        const std::size_t end = value_end(t, i);
        if (end == npos || end == i) return false;
        if (!f(t.substr(i, end - i))) return true;
        i = skip_space(t, end);
        if (i >= t.size() || t[i] != ',') return i < t.size() && t[i] == ']';
        i = skip_space(t, i + 1);
    }
    return false;
}

// A member name as written (between its quotes) against the unescaped `name`.
bool same_name(std::string_view quoted, std::string_view name) {
    const std::string_view raw = quoted.substr(1, quoted.size() - 2);
    if (raw.find('\\') == npos) return raw == name;
    const auto decoded = nlohmann::json::parse(quoted, nullptr, false);
    return decoded.is_string() && decoded.get_ref<const std::string&>() == name;
}

}  // namespace

std::optional<std::string_view> json_value_text(std::string_view text) {
    // Up to the value's own end: nlohmann takes a NUL after it for the end of the input.
    if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);
    const std::size_t begin = skip_space(text, 0);
    const std::size_t end = value_end(text, begin);
    if (end == npos || end == begin) return std::nullopt;
    return text.substr(begin, end - begin);
}

std::size_t json_member_count(std::string_view text) {
    std::size_t n = 0;
    any_outside_strings(text, [&n](char c) {
        n += c == ':';
        return false;
    });
    return n;
}

std::optional<std::vector<std::string_view>> json_array_elements(std::string_view array_text) {
    std::vector<std::string_view> out;
    if (!each_element(array_text, [&out](std::string_view e) {
            out.push_back(e);
            return true;
        }))
        return std::nullopt;
    return out;
}

std::optional<std::string_view> json_element(std::string_view array_text, std::size_t index) {
    std::optional<std::string_view> found;
    each_element(array_text, [&](std::string_view e) {
        if (index-- == 0) found = e;
        return !found;
    });
    return found;
}

std::optional<std::string_view> json_member(std::string_view t, std::string_view name) {
    if (t.size() < 2 || t.front() != '{') return std::nullopt;
    std::optional<std::string_view> found;
    std::size_t i = skip_space(t, 1);
    while (i < t.size() && t[i] == '"') {
        const std::size_t name_end = string_end(t, i);
        if (name_end == npos) return std::nullopt;
        const std::string_view quoted = t.substr(i, name_end - i);
        i = skip_space(t, name_end);
        if (i >= t.size() || t[i] != ':') return std::nullopt;
        i = skip_space(t, i + 1);
        const std::size_t end = value_end(t, i);
        if (end == npos || end == i) return std::nullopt;
        if (same_name(quoted, name)) found = t.substr(i, end - i);  // the last one counts
        i = skip_space(t, end);
        if (i >= t.size() || t[i] != ',') break;
        i = skip_space(t, i + 1);
    }
    return found;
}

std::string json_depth_message(std::size_t max_depth) {
    return "JSON nested deeper than limits.max_json_depth (" + std::to_string(max_depth) + ")";
}

}  // namespace batchgate::routes
