#include "text/json_text.hpp"

#include <algorithm>
#include <cstdlib>
#include <list>

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

// Whether names[from, end) holds one name twice: pairs compared for an ordinary object, a
// sorted copy for a large one.
bool names_repeat(const std::vector<std::string_view>& names, std::size_t from) {
    const auto first = names.begin() + static_cast<std::ptrdiff_t>(from);
    if (names.end() - first <= 16) {
        for (auto a = first; a != names.end(); ++a)
            if (std::find(std::next(a), names.end(), *a) != names.end()) return true;
        return false;
    }
    std::vector<std::string_view> sorted(first, names.end());
    std::ranges::sort(sorted);
    return std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end();
}

// One pass over a JSON text, in the order nlohmann reads it, stopping at the first fault: the
// fault nlohmann reports first is the one found first here. Nesting is counted as it goes (for
// valid text the same count json_too_deep makes).
class json_checker {
public:
    // names: when given, set to whether an object repeats a member name (unescaped).
    json_checker(std::string_view text, std::size_t max_depth, bool* names)
        : t_(text), max_depth_(max_depth), repeats_(names) {}

    json_status run() {
        // nlohmann skips a UTF-8 byte order mark, only at the very start (0xEF is no JSON byte
        // otherwise, so anything else starting with it fails below).
        if (t_.starts_with("\xEF\xBB\xBF")) i_ = 3;
        i_ = skip_space(t_, i_);
        for (;;) {
            if (!value()) return status_;
            // After a value: close what it ends, or go on to the next element or member.
            for (;;) {
                i_ = skip_space(t_, i_);
                if (open_.empty()) return i_ == t_.size() ? json_status::ok : json_status::invalid;
                if (at() == ',') {
                    i_ = skip_space(t_, i_ + 1);
                    if (open_.back() == '{' && !member_name()) return json_status::invalid;
                    break;
                }
                if (at() != (open_.back() == '{' ? '}' : ']')) return json_status::invalid;
                if (open_.back() == '{' && repeats_) close_names();
                open_.pop_back();
                ++i_;
            }
        }
    }

private:
    // The byte at i_, or 0 at the end (a NUL is no JSON byte, so it never matches).
    unsigned char at() const { return i_ < t_.size() ? static_cast<unsigned char>(t_[i_]) : 0; }

    // A value at i_ (i_ then just past it, or past an opening bracket whose first element or
    // member name has been read); false with status_ set on a fault.
    bool value() {
        switch (at()) {
            case '{':
            case '[': {
                const char open = static_cast<char>(at());
                if (open_.size() == max_depth_) return fault(json_status::too_deep);
                open_.push_back(open);
                if (open == '{' && repeats_) starts_.push_back(names_.size());
                i_ = skip_space(t_, i_ + 1);
                if (at() == (open == '{' ? '}' : ']')) {
                    // An empty one: the caller's loop closes it.
                    return true;
                }
                if (open == '{' && !member_name()) return fault(json_status::invalid);
                return value();
            }
            case '"': return string() || fault(json_status::invalid);
            case 't': return literal("true");
            case 'f': return literal("false");
            case 'n': return literal("null");
            default: return number();
        }
    }

    bool fault(json_status s) {
        status_ = s;
        return false;
    }

    // A member name at i_, its colon, and the space up to its value.
    bool member_name() {
        const std::size_t begin = i_;
        if (at() != '"' || !string()) return false;
        if (repeats_) note_name(t_.substr(begin + 1, i_ - begin - 2));
        i_ = skip_space(t_, i_);
        if (at() != ':') return false;
        i_ = skip_space(t_, i_ + 1);
        return true;
    }

    bool literal(std::string_view word) {
        if (t_.substr(i_, word.size()) != word) return fault(json_status::invalid);
        i_ += word.size();
        return true;
    }

    static bool digit(unsigned char c) { return c >= '0' && c <= '9'; }

    // -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?; a value nlohmann reads as a double (a
    // fraction, an exponent, or an integer past 64 bits) must be finite.
    bool number() {
        const std::size_t begin = i_;
        if (at() == '-') ++i_;
        if (at() == '0') {
            ++i_;
        } else if (digit(at())) {
            while (digit(at())) ++i_;
        } else {
            return fault(json_status::invalid);
        }
        const std::size_t integer_digits = i_ - begin - (t_[begin] == '-');
        if (at() == '.') {
            ++i_;
            if (!digit(at())) return fault(json_status::invalid);
            while (digit(at())) ++i_;
        }
        bool exponent = false;
        if (at() == 'e' || at() == 'E') {
            exponent = true;
            ++i_;
            if (at() == '+' || at() == '-') ++i_;
            if (!digit(at())) return fault(json_status::invalid);
            while (digit(at())) ++i_;
        }
        // Below 10^308 without an exponent: finite, whatever its fraction.
        if (!exponent && integer_digits <= 308) return true;
        const std::string text(t_.substr(begin, i_ - begin));
        return std::isfinite(std::strtod(text.c_str(), nullptr)) || fault(json_status::out_of_range);
    }

    int hex4() {  // four hex digits at i_ (i_ past them), or -1
        if (t_.size() - i_ < 4) return -1;
        int v = 0;
        for (int k = 0; k < 4; ++k) {
            const char c = t_[i_++];
            v <<= 4;
            if (c >= '0' && c <= '9') v |= c - '0';
            else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
            else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
            else return -1;
        }
        return v;
    }

    // A string at i_ ('"'), i_ then just past it: no control character, escapes as RFC 8259
    // has them (a \u surrogate only as a high one followed by a low one), UTF-8 as RFC 3629.
    bool string() {
        ++i_;
        for (;;) {
            const unsigned char c = at();
            if (i_ >= t_.size() || c < 0x20) return false;
            if (c == '"') {
                ++i_;
                return true;
            }
            if (c == '\\') {
                ++i_;
                const unsigned char e = at();
                ++i_;
                if (e == 'u') {
                    const int cp = hex4();
                    if (cp < 0 || (cp >= 0xDC00 && cp <= 0xDFFF)) return false;
                    if (cp >= 0xD800 && cp <= 0xDBFF) {
                        if (at() != '\\') return false;
                        ++i_;
                        if (at() != 'u') return false;
                        ++i_;
                        const int low = hex4();
                        if (low < 0xDC00 || low > 0xDFFF) return false;
                    }
                } else if (e != '"' && e != '\\' && e != '/' && e != 'b' && e != 'f' && e != 'n' && e != 'r' &&
                           e != 't') {
                    return false;
                }
                continue;
            }
            if (c < 0x80) {
                ++i_;
                continue;
            }
            if (!utf8_sequence(c)) return false;
        }
    }

    // The multi-byte UTF-8 sequence led by c at i_ (RFC 3629, section 4), i_ past it.
    bool utf8_sequence(unsigned char c) {
        unsigned char low = 0x80, high = 0xBF;  // the second byte's range
        std::size_t n;
        if (c >= 0xC2 && c <= 0xDF) n = 1;
        else if (c == 0xE0) n = 2, low = 0xA0;
        else if (c >= 0xE1 && c <= 0xEC) n = 2;
        else if (c == 0xED) n = 2, high = 0x9F;
        else if (c >= 0xEE && c <= 0xEF) n = 2;
        else if (c == 0xF0) n = 3, low = 0x90;
        else if (c >= 0xF1 && c <= 0xF3) n = 3;
        else if (c == 0xF4) n = 3, high = 0x8F;
        else return false;
        ++i_;
        for (std::size_t k = 0; k < n; ++k, low = 0x80, high = 0xBF) {
            const unsigned char b = at();
            if (i_ >= t_.size() || b < low || b > high) return false;
            ++i_;
        }
        return true;
    }

    // A member name as written (between its quotes), of the innermost open object.
    void note_name(std::string_view raw) {
        if (raw.find('\\') == npos) {
            names_.push_back(raw);
            return;
        }
        const std::string quoted = '"' + std::string(raw) + '"';
        names_.push_back(decoded_.emplace_back(json_string_value(quoted).value_or(quoted)));
    }

    // The innermost object closes: does it name a member twice?
    void close_names() {
        if (!*repeats_) *repeats_ = names_repeat(names_, starts_.back());
        names_.resize(starts_.back());
        starts_.pop_back();
    }

    std::string_view t_;
    std::size_t max_depth_;
    std::size_t i_ = 0;
    std::string open_;  // the brackets open at i_, outermost first
    json_status status_ = json_status::invalid;
    bool* repeats_;                       // nullptr: names are not compared
    std::vector<std::string_view> names_;  // of the open objects, innermost last
    std::vector<std::size_t> starts_;      // where each open object's names begin
    std::list<std::string> decoded_;       // names written with escapes, unescaped
};

}  // namespace

json_status check_json(std::string_view text, std::size_t max_depth, bool* repeated_names) {
    if (repeated_names) *repeated_names = false;
    const json_status s = json_checker(text, max_depth, repeated_names).run();
    if (s == json_status::ok || s == json_status::too_deep) return s;
    // parse_json's own order: nesting over the whole text first, then a NUL anywhere.
    if (json_too_deep(text, max_depth)) return json_status::too_deep;
    if (text.find('\0') != std::string_view::npos) return json_status::invalid;
    return s;
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

std::string_view checked_value_text(std::string_view checked) {
    if (checked.starts_with("\xEF\xBB\xBF")) checked.remove_prefix(3);
    checked.remove_prefix(std::min(skip_space(checked, 0), checked.size()));
    while (!checked.empty() && (checked.back() == ' ' || checked.back() == '\t' || checked.back() == '\n' || checked.back() == '\r'))
        checked.remove_suffix(1);
    return checked;
}

std::size_t json_member_count(std::string_view text) {
    std::size_t n = 0;
    any_outside_strings(text, [&n](char c) {
        n += c == ':';
        return false;
    });
    return n;
}

std::optional<std::string> json_string_value(std::string_view t) {
    if (t.size() < 2 || t.front() != '"' || t.back() != '"') return std::nullopt;
    const std::string_view raw = t.substr(1, t.size() - 2);
    if (raw.find('\\') == npos) return std::string(raw);
    const auto decoded = nlohmann::json::parse(t, nullptr, false);
    if (!decoded.is_string()) return std::nullopt;
    return decoded.get<std::string>();
}

bool json_integer_literal(std::string_view t) {
    if (t.starts_with('-')) t.remove_prefix(1);
    return !t.empty() && std::all_of(t.begin(), t.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool json_repeats_a_name(std::string_view t) {
    // check_json walks the names anyway (called only for an answer whose check found a
    // repeated name somewhere, so the second walk is rare).
    bool repeated = false;
    return check_json(t, max_json_depth_cap, &repeated) == json_status::ok && repeated;
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

namespace {
// Calls f with the value of each member `name` of an object's text, in order, while f returns
// true; false when the text is no object (or ends early).
template <typename F>
bool each_member_named(std::string_view t, std::string_view name, F&& f) {
    if (t.size() < 2 || t.front() != '{') return false;
    std::size_t i = skip_space(t, 1);
    while (i < t.size() && t[i] == '"') {
        const std::size_t name_end = string_end(t, i);
        if (name_end == npos) return false;
        const std::string_view quoted = t.substr(i, name_end - i);
        i = skip_space(t, name_end);
        if (i >= t.size() || t[i] != ':') return false;
        i = skip_space(t, i + 1);
        const std::size_t end = value_end(t, i);
        if (end == npos || end == i) return false;
        if (same_name(quoted, name) && !f(t.substr(i, end - i))) return true;
        i = skip_space(t, end);
        if (i >= t.size() || t[i] != ',') break;
        i = skip_space(t, i + 1);
    }
    return true;
}
}  // namespace

std::vector<std::string_view> json_members(std::string_view t, std::string_view name) {
    std::vector<std::string_view> found;
    if (!each_member_named(t, name, [&](std::string_view v) {
            found.push_back(v);
            return true;
        }))
        found.clear();
    return found;
}

std::optional<std::string_view> json_member(std::string_view t, std::string_view name, bool names_unique) {
    std::optional<std::string_view> found;
    const bool object = each_member_named(t, name, [&](std::string_view v) {
        found = v;               // the last one counts
        return !names_unique;    // unless it is the only one
    });
    return object ? found : std::nullopt;
}

std::string json_depth_message(std::size_t max_depth) {
    return "JSON nested deeper than limits.max_json_depth (" + std::to_string(max_depth) + ")";
}

}  // namespace batchgate::routes
