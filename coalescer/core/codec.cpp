#include "coalescer/core/codec.hpp"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <random>
#include <unordered_set>

#include <boost/container_hash/hash.hpp>

#include "net/errors.hpp"
#include "text/json_pointer.hpp"
#include "text/json_text.hpp"
#include "text/url.hpp"

namespace batchgate::coalescer {

namespace {

using json = nlohmann::json;
constexpr auto replace_invalid = json::error_handler_t::replace;

// json::dump, into a string that starts with room for a typical item: one allocation where
// dump's own string grows two or three times (it runs for every caller's answer).
std::string dump(const json& j) {
    std::string out;
    out.reserve(128);
    nlohmann::detail::serializer<json> s(nlohmann::detail::output_adapter<char, std::string>(out), ' ', replace_invalid);
    s.dump(j, false, false, 0);
    return out;
}

std::optional<std::string> first_query_value(const routes::param_list& query,
                                             std::string_view name) {
    for (const auto& [k, v] : query)
        if (k == name) return v;
    return std::nullopt;
}

std::optional<std::string> path_value(const routes::param_list& params, std::string_view name) {
    return first_query_value(params, name);
}

std::optional<std::string> header_value(const caller_request& request, std::string_view name) {
    if (!request.header) return std::nullopt;
    auto v = request.header(name);
    if (!v) return std::nullopt;
    return std::string(*v);
}

std::string to_upper(std::string_view s) {
    std::string out(s);
    for (auto& c : out)
        if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
    return out;
}

// Length-prefixed, so no value can forge a separator: "<len>:<bytes>".
void append_field(std::string& out, std::string_view text) {
    char digits[20];
    const char* end = std::to_chars(digits, digits + sizeof digits, text.size()).ptr;
    out.append(digits, static_cast<std::size_t>(end - digits));
    out += ':';
    out += text;
}

// One partition value: source tag, name, then '-' (absent) or '+' and the value.
void append_value(std::string& out, char source, std::string_view name,
                  const std::optional<std::string>& value) {
    out += source;
    append_field(out, name);
    if (!value) {
        out += '-';
        return;
    }
    out += '+';
    append_field(out, *value);
}

// Calls f(name) for each of the partition's headers in config order: configured ones, then
// credentials. No copies: it runs for every caller.
template <class F>
void each_partition_header(const config::partition_settings& p, F&& f) {
    for (const auto& h : p.headers) f(std::string_view(h));
    if (p.credentials)
        for (std::string_view h : {std::string_view("authorization"), std::string_view("cookie")})
            if (std::find(p.headers.begin(), p.headers.end(), h) == p.headers.end()) f(h);
}

// Integer JSON numbers become their text; strings stay as they are; anything else is no key.
std::optional<std::string> key_text(const json& v) {
    if (v.is_string()) return v.get<std::string>();
    if (v.is_number_integer()) return v.dump();
    return std::nullopt;
}

// The caller's body parsed on first use: nullptr when empty, discarded when not JSON.
class lazy_body {
public:
    explicit lazy_body(std::string_view text) : text_(text) {}
    // nullptr when the body is empty or not JSON (invalid() tells which).
    const json* get() {
        if (!parsed_) {
            parsed_ = true;
            if (!text_.empty()) doc_ = routes::parse_json(text_).value;
        }
        if (text_.empty() || doc_.is_discarded()) return nullptr;
        return &doc_;
    }
    bool invalid() {
        get();
        return !text_.empty() && doc_.is_discarded();
    }

private:
    std::string_view text_;
    bool parsed_ = false;
    json doc_;
};

// ---------------------------------------------------------------------------------------
// Templates: {source.name:type} placeholders (docs/design/write-coalescing.md section 5)

struct placeholder {
    std::string_view source;  // path, query, header, body, items, key, method, map; item, status (answers)
    std::string_view name;    // "" for items, key, method and the whole body
    std::string_view type;    // "" or int, number, bool, string, json
};

// A placeholder's value from the caller's own request: {path.X}, {query.X} (first occurrence),
// {header.X}, {body} and {body./PTR}; nullopt when the caller did not send it (or for any other
// source). The query is parsed on first use, the body by lazy_body.
class request_values {
public:
    request_values(const caller_request& request, lazy_body& body) : request_(request), body_(body) {}

    std::optional<json> get(const placeholder& p) {
        if (p.source == "path") {
            if (auto v = path_value(request_.path_params, p.name)) return json(*v);
        } else if (p.source == "query") {
            if (!query_) query_ = routes::parse_query(request_.query);
            if (auto v = first_query_value(*query_, p.name)) return json(*v);
        } else if (p.source == "header") {
            if (auto v = header_value(request_, p.name)) return json(*v);
        } else if (p.source == "body") {
            const json* doc = body_.get();
            if (!doc) return std::nullopt;
            if (p.name.empty()) return *doc;
            auto ptr = routes::json_pointer::parse(p.name);
            if (const json* v = ptr ? ptr->find(*doc) : nullptr) return *v;
        }
        return std::nullopt;
    }

private:
    const caller_request& request_;
    lazy_body& body_;
    std::optional<routes::param_list> query_;
};

bool is_type(std::string_view t) {
    return t == "int" || t == "number" || t == "bool" || t == "string" || t == "json";
}

// nullopt when inner is not a placeholder at all (kept literally).
std::optional<placeholder> parse_placeholder(std::string_view inner) {
    placeholder p;
    if (auto colon = inner.rfind(':'); colon != std::string_view::npos) {
        p.type = inner.substr(colon + 1);
        if (!is_type(p.type)) return std::nullopt;
        inner = inner.substr(0, colon);
    }
    if (inner == "items" || inner == "key" || inner == "method" || inner == "body" || inner == "item" ||
        inner == "status") {
        p.source = inner;
        return p;
    }
    auto dot = inner.find('.');
    if (dot == std::string_view::npos || dot + 1 == inner.size()) return std::nullopt;
    p.source = inner.substr(0, dot);
    p.name = inner.substr(dot + 1);
    if (p.source != "path" && p.source != "query" && p.source != "header" && p.source != "body" &&
        p.source != "map" && p.source != "item")
        return std::nullopt;
    return p;
}

std::string placeholder_text(const placeholder& p) {
    std::string out = "{" + std::string(p.source);
    if (!p.name.empty()) out += "." + std::string(p.name);
    if (!p.type.empty()) out += ":" + std::string(p.type);
    return out + "}";
}

// Applies a type suffix; nullopt (with why) when the value does not convert.
std::optional<json> convert(const json& v, std::string_view type, std::string& why) {
    if (type.empty()) return v;
    const bool is_str = v.is_string();
    const std::string text = is_str ? v.get<std::string>() : dump(v);
    if (type == "string") return json(text);
    if (type == "int") {
        if (v.is_number_integer()) return v;
        if (v.is_number_float()) {
            if (auto n = routes::whole_int64(v.get<double>())) return json(*n);
        } else if (is_str) {
            // Only the canonical spelling: "08" and "-0" would reach the upstream as 8 and 0
            // while the caller's key stays "08", so its answer (matched on 8) would never be
            // found, and "8" and "08" would be two items for one upstream record.
            std::int64_t n = 0;
            auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
            if (!text.empty() && ec == std::errc{} && p == text.data() + text.size()) {
                if (std::to_string(n) == text) return json(n);
                why = dump(v) + " is not written as a plain integer (no leading zeros, no -0)";
                return std::nullopt;
            }
            std::uint64_t u = 0;
            auto [p2, ec2] = std::from_chars(text.data(), text.data() + text.size(), u);
            if (!text.empty() && ec2 == std::errc{} && p2 == text.data() + text.size() && std::to_string(u) == text)
                return json(u);
        }
        why = dump(v) + " is not an integer";
        return std::nullopt;
    }
    if (type == "number") {
        if (v.is_number()) return v;
        if (is_str) {
            auto n = routes::parse_json(text, 0);
            if (n.ok() && n.value.is_number()) return n.value;
        }
        why = dump(v) + " is not a number";
        return std::nullopt;
    }
    if (type == "bool") {
        if (v.is_boolean()) return v;
        if (text == "true") return json(true);
        if (text == "false") return json(false);
        why = dump(v) + " is not true or false";
        return std::nullopt;
    }
    // json: a string's text is parsed; any other value already is JSON.
    if (!is_str) return v;
    auto parsed = routes::parse_json(text);
    if (parsed.status == routes::json_status::too_deep) {
        why = "the value is " + routes::json_depth_message(routes::max_json_depth_cap);
        return std::nullopt;
    }
    if (!parsed.ok()) {
        why = dump(v) + " is not valid JSON";
        return std::nullopt;
    }
    return std::move(parsed.value);
}

// How a template's placeholders get their values.
struct template_values {
    // The value of p (before conversion), nullopt when the caller did not send it. known is set
    // to false when p is not something this template can use (it is then kept literally).
    std::function<std::optional<json>(const placeholder& p, bool& known)> resolve;
    const json* items = nullptr;  // for "{items}"; nullptr: kept literally
    std::string error;            // first failed conversion
};

std::string text_of(const json& v) { return v.is_string() ? v.get<std::string>() : dump(v); }

// Value of one placeholder after conversion. found = false: keep literally; nullopt with found:
// absent (or a failed conversion, recorded in values.error).
std::optional<json> value_of(const placeholder& p, template_values& values, bool& found) {
    found = true;
    auto v = values.resolve(p, found);
    if (!found || !v) return std::nullopt;
    std::string why;
    auto converted = convert(*v, p.type, why);
    if (!converted && values.error.empty()) values.error = placeholder_text(p) + ": " + why;
    return converted;
}

// Replaces every placeholder in text; absent values become "". Unknown brace groups (e.g.
// "{items}" inside a longer string) are kept verbatim.
std::string interpolate(std::string_view text, template_values& values, bool url_encoded) {
    std::string out;
    out.reserve(text.size());
    std::size_t i = 0;
    while (i < text.size()) {
        auto open = text.find('{', i);
        if (open == std::string_view::npos) break;
        auto close = text.find('}', open + 1);
        if (close == std::string_view::npos) break;
        out.append(text.substr(i, open - i));
        auto p = parse_placeholder(text.substr(open + 1, close - open - 1));
        bool found = false;
        std::optional<json> v;
        if (p && p->source != "items") v = value_of(*p, values, found);
        if (!found) {
            out.append(text.substr(open, close - open + 1));
        } else if (v) {
            auto t = text_of(*v);
            out += url_encoded ? routes::url_encode(t) : t;
        }
        i = close + 1;
    }
    out.append(text.substr(std::min(i, text.size())));
    return out;
}

// The placeholder a string is exactly, if any ("{path.id}" but not "a{path.id}" or "{a}{b}").
std::optional<placeholder> whole_placeholder(const std::string& s) {
    if (s.size() > 2 && s.front() == '{' && s.back() == '}' && s.find_first_of("{}", 1) == s.size() - 1)
        return parse_placeholder(std::string_view(s).substr(1, s.size() - 2));
    return std::nullopt;
}

enum class fill { keep, remove };

// Rewrites string values of a template in place; returns remove when the value is a lone
// placeholder without a value.
fill fill_template(json& node, template_values& values) {
    if (node.is_string()) {
        const auto& s = node.get_ref<const std::string&>();
        if (auto p = whole_placeholder(s)) {
            if (p->source == "items") {
                if (values.items) node = *values.items;
                return fill::keep;
            }
            bool found = false;
            auto v = value_of(*p, values, found);
            if (found) {
                if (!v) return fill::remove;
                node = std::move(*v);
                return fill::keep;
            }
        }
        if (s.find('{') != std::string::npos) node = interpolate(s, values, false);
        return fill::keep;
    }
    if (node.is_object()) {
        for (auto it = node.begin(); it != node.end();) {
            if (fill_template(*it, values) == fill::remove) it = node.erase(it);
            else ++it;
        }
    } else if (node.is_array()) {
        json kept = json::array();
        for (auto& element : node)
            if (fill_template(element, values) == fill::keep) kept.push_back(std::move(element));
        node = std::move(kept);
    }
    return fill::keep;
}

// Evaluates only the typed placeholders of a template, without building it: records the first
// failed conversion in values.error.
void check_typed_text(std::string_view text, template_values& values) {
    std::size_t i = 0;
    while (values.error.empty()) {
        auto open = text.find('{', i);
        if (open == std::string_view::npos) return;
        auto close = text.find('}', open + 1);
        if (close == std::string_view::npos) return;
        auto p = parse_placeholder(text.substr(open + 1, close - open - 1));
        if (p && !p->type.empty() && p->source != "items") {
            bool found = false;
            value_of(*p, values, found);
        }
        i = close + 1;
    }
}

void check_typed(const json& node, template_values& values) {
    if (node.is_string()) {
        check_typed_text(node.get_ref<const std::string&>(), values);
    } else if (node.is_structured()) {
        for (const auto& element : node) {
            if (!values.error.empty()) return;
            check_typed(element, values);
        }
    }
}

// Placeholder values of a batch template: the partition's values.
template_values partition_template_values(const partition_values& values) {
    template_values out;
    out.resolve = [&values](const placeholder& p, bool& known) -> std::optional<json> {
        const std::map<std::string, std::string>* m = nullptr;
        if (p.source == "path") m = &values.path;
        else if (p.source == "query") m = &values.query;
        else if (p.source == "header") m = &values.headers;
        else if (p.source == "body" && !p.name.empty()) {
            auto it = values.body.find(std::string(p.name));
            if (it == values.body.end()) return std::nullopt;
            return it->second;
        } else {
            known = false;
            return std::nullopt;
        }
        auto it = m->find(std::string(p.name));
        if (it == m->end()) return std::nullopt;
        return json(it->second);
    };
    return out;
}

// ---------------------------------------------------------------------------------------
// Splitting

// Headers the upstream client owns, or that would be wrong for a rebuilt request.
bool never_forwarded(std::string_view name, bool json_body) {
    return name == "host" || name == "content-length" || name == "transfer-encoding" ||
           name == "connection" || (json_body && name == "content-type");
}

std::string status_text(const json& v) {
    if (v.is_string()) return v.get<std::string>();
    if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
    if (v.is_number()) return v.dump();
    if (v.is_null()) return "null";
    return {};
}

std::optional<int> status_code_of(const json& v) {
    int code = 0;
    if (v.is_number_integer()) {
        auto n = v.get<std::int64_t>();
        if (n < 200 || n > 599) return std::nullopt;  // a caller's final answer is never 1xx
        code = static_cast<int>(n);
    } else if (v.is_number_float()) {
        double d = v.get<double>();
        if (!(d >= 200 && d <= 599) || d != static_cast<double>(static_cast<int>(d)))
            return std::nullopt;
        code = static_cast<int>(d);
    } else {
        return std::nullopt;
    }
    return code;
}

// Optional pointer setting: "" means not configured.
std::optional<routes::json_pointer> optional_pointer(const std::string& text, bool& bad) {
    if (text.empty()) return std::nullopt;
    auto p = routes::json_pointer::parse(text);
    if (!p) bad = true;
    return p;
}

item_outcome item_error(int status, std::string_view message, std::string_view route) {
    return {status, error_body("upstream_item_error", message, route)};
}

// One result list with its pointers parsed.
struct compiled_list {
    const config::result_list* list = nullptr;
    routes::json_pointer items;
    std::vector<routes::json_pointer> key;
    std::optional<routes::json_pointer> status_code, status_field, error;
    routes::json_pointer body;
    std::vector<std::pair<std::vector<std::pair<routes::json_pointer, const json*>>, int>> rules;
};

// Pointer -> value conditions, all of which must hold on `item`.
bool all_equal(const std::vector<std::pair<routes::json_pointer, const json*>>& when, const json& item) {
    return std::all_of(when.begin(), when.end(), [&item](const auto& w) {
        const json* v = w.first.find(item);
        return v && *v == *w.second;
    });
}

std::optional<std::vector<std::pair<routes::json_pointer, const json*>>> compile_when(
    const std::vector<std::pair<std::string, json>>& when) {
    std::vector<std::pair<routes::json_pointer, const json*>> out;
    for (const auto& [ptr, value] : when) {
        auto p = routes::json_pointer::parse(ptr);
        if (!p) return std::nullopt;
        out.emplace_back(*p, &value);
    }
    return out;
}

std::optional<compiled_list> compile(const config::result_list& l) {
    bool bad = false;
    compiled_list c;
    c.list = &l;
    auto items = routes::json_pointer::parse(l.items);
    auto body = routes::json_pointer::parse(l.body);
    if (!items || !body) return std::nullopt;
    c.items = *items;
    c.body = *body;
    for (const auto& k : l.key) {
        auto p = routes::json_pointer::parse(k);
        if (!p) return std::nullopt;
        c.key.push_back(*p);
    }
    if (!l.by_position && c.key.empty()) return std::nullopt;
    c.status_code = optional_pointer(l.status_code, bad);
    c.status_field = optional_pointer(l.status_field, bad);
    c.error = optional_pointer(l.error, bad);
    if (bad) return std::nullopt;
    for (const auto& rule : l.status_rules) {
        auto when = compile_when(rule.when);
        if (!when) return std::nullopt;
        c.rules.emplace_back(std::move(*when), rule.status);
    }
    return c;
}

// The key value v found at p in text (the document it was read from; "" when not at hand): a
// string's value, or an integer's digits as written. The parse reads -0 as 0 and an integer past
// 64 bits as a double: those come from the text when it is at hand ("-0" names the caller who
// sent "-0", not the one who sent "0"). Other numbers are no keys.
std::optional<std::string> key_as_written(const routes::json_pointer& p, const json& v, std::string_view text) {
    auto integer_literal = [](std::string_view t) {
        if (!t.empty() && t.front() == '-') t.remove_prefix(1);
        return !t.empty() && std::all_of(t.begin(), t.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
    };
    if (!text.empty() && (v.is_number_float() || (v.is_number_integer() && v == 0)))
        if (auto t = p.find_text(text); t && integer_literal(*t)) return std::string(*t);
    return key_text(v);
}

// The key an answer entry names through `pointers` (the first present wins), as written.
std::optional<std::string> answer_key(const std::vector<routes::json_pointer>& pointers, const json& entry,
                                      std::string_view entry_text) {
    for (const auto& p : pointers)
        if (const json* v = p.find(entry)) return key_as_written(p, *v, entry_text);
    return std::nullopt;
}

// The texts of the elements of the array `array` found at `at` in `body` ("" each when they
// cannot be told: then keys come from the parse alone).
std::vector<std::string_view> element_texts(const routes::json_pointer& at, std::string_view body, const json& array) {
    auto array_text = at.find_text(body);
    auto elements = array_text ? routes::json_array_elements(*array_text) : std::nullopt;
    if (elements && elements->size() == array.size()) return std::move(*elements);
    return std::vector<std::string_view>(array.size());
}

// The key a value's text is: a string's value, an integer's digits as written; nullopt for any
// other value (present, but no key).
std::optional<std::string> key_of_value(std::string_view v) {
    if (v.starts_with('"')) return routes::json_string_value(v);
    if (routes::json_integer_literal(v)) return std::string(v);
    return std::nullopt;
}

// The key an answer entry's text names through `pointers` (the first present wins), as
// answer_key reads it from the parse.
std::optional<std::string> answer_key_text(const std::vector<routes::json_pointer>& pointers,
                                           std::string_view entry_text, bool names_unique) {
    for (const auto& p : pointers)
        if (auto v = p.find_in_value(entry_text, names_unique)) return key_of_value(*v);
    return std::nullopt;
}

// An entry's key as the parse reads it (the last copy of a repeated name); other_key is called
// with each other key a copy of a repeated name on its way names (a reader that keeps another
// copy than the last reads that one; more than once for a key two copies name). twofold: a copy
// reads differently (another key, or none), so the entry names more than one key and is none
// of them's answer. may_repeat: check_json found a repeated name somewhere in the answer
// (without one, there are no other copies to read).
struct entry_key {
    std::optional<std::string> last;
    bool twofold = false;
};
template <typename OtherKey>
entry_key read_entry_key(const std::vector<routes::json_pointer>& pointers, std::string_view entry_text,
                         bool may_repeat, OtherKey&& other_key) {
    entry_key k;
    k.last = answer_key_text(pointers, entry_text, !may_repeat);
    if (!may_repeat) return k;
    for (const auto& p : pointers) {
        const bool every_copy = p.each_in_value(entry_text, [&](std::string_view v) {
            auto key = key_of_value(v);
            if (key == k.last) return;
            k.twofold = true;
            if (key) other_key(*key);
        });
        if (every_copy) return k;  // every reader stops here (the first pointer present wins)
        // A copy without this pointer: its reader goes on to the next pointer.
    }
    if (k.last) k.twofold = true;  // and may find none: no key, where the parse found one
    return k;
}

// A scalar's text parsed, for what is read from it only now and then (an error message, a
// status that is no plain integer or string).
json parsed_value(std::string_view text) { return routes::parse_json(text).value; }

// status_code_of, from the value's text: a plain integer without a parse.
std::optional<int> status_code_of_text(std::string_view text) {
    if (text.size() <= 4 && routes::json_integer_literal(text) && !text.starts_with('-')) {
        int code = 0;
        std::from_chars(text.data(), text.data() + text.size(), code);
        if (code < 200 || code > 599) return std::nullopt;
        return code;
    }
    if (text.empty() || !(text.front() == '-' || (text.front() >= '0' && text.front() <= '9'))) return std::nullopt;
    return status_code_of(parsed_value(text));
}

// status_text, from the value's text: a string without escapes as it is.
std::string status_text_of(std::string_view text) {
    if (text.size() >= 2 && text.front() == '"' && text.substr(1, text.size() - 2).find_first_of("\\") == text.npos)
        return std::string(text.substr(1, text.size() - 2));
    return status_text(parsed_value(text));
}

// A caller's body: the value's own bytes in the upstream's answer, as the upstream wrote them
// (numbers keep their digits, members their order). Serialized from a parse only when a name
// repeats in one of its objects: routing and statuses read the last of them, as the parse
// does, and a client's parser might take the first. may_repeat: the answer has a repeated name
// somewhere (its check found one), so this value is looked at.
std::string body_text(std::string_view value_text, bool may_repeat) {
    if (may_repeat && routes::json_repeats_a_name(value_text)) return dump(parsed_value(value_text));
    return std::string(value_text);
}

// The answer for one item of the batch, read from its text in the (checked) answer; item is its
// parse, which only a list with status rules or a response template needs (nullptr otherwise).
// may_repeat: a name repeats somewhere in the answer (body_text).
item_outcome outcome_of(const compiled_list& c, std::string_view route, std::string_view item_text,
                        const json* item, bool may_repeat) {
    const auto& l = *c.list;
    int status = 200;
    auto rule = std::find_if(c.rules.begin(), c.rules.end(),
                             [item](const auto& r) { return item && all_equal(r.first, *item); });
    if (rule != c.rules.end()) {
        status = rule->second;
    } else if (l.status != 0) {
        status = l.status;
    } else {
        std::optional<int> from_code;
        const auto code_value = c.status_code ? c.status_code->find_in_value(item_text, !may_repeat) : std::nullopt;
        if (code_value) from_code = status_code_of_text(*code_value);
        const auto status_value = c.status_field ? c.status_field->find_in_value(item_text, !may_repeat) : std::nullopt;
        if (!from_code && code_value && *code_value != "null" && !status_value)
            // Never fail open: an item whose status cannot be read is not a success.
            return item_error(502, "upstream reported invalid item status code " + dump(parsed_value(*code_value)),
                              route);
        if (from_code) {
            status = *from_code;
        } else if (status_value) {
            auto it = l.status_map.find(status_text_of(*status_value));
            if (it == l.status_map.end())
                return item_error(502, "upstream reported unknown item status " + dump(parsed_value(*status_value)),
                                  route);
            status = it->second;
        }
    }

    if (status >= 200 && status < 300) {
        if (status == 204) return {status, {}};
        if (!l.body_template.is_null() && item) {
            // Rendered per caller (render_answer): it may use the caller's own request.
            item_outcome out{status, {}};
            out.entry = *item;
            out.render = &l;
            return out;
        }
        if (l.body_value) return {status, dump(*l.body_value)};
        const auto body = c.body.find_in_value(item_text, !may_repeat);
        if (!body) return item_error(502, "upstream item has no " + c.body.text(), route);
        return {status, body_text(*body, may_repeat)};
    }
    // A failed item: with an `error` pointer, a gateway error naming the upstream's message;
    // without one, the upstream's own item (at `body`, else whole) is the caller's answer.
    if (!c.error)
        return {status, body_text(c.body.find_in_value(item_text, !may_repeat).value_or(item_text), may_repeat)};
    std::string message;
    if (auto e = c.error->find_in_value(item_text, !may_repeat); e && e->starts_with('"'))
        message = routes::json_string_value(*e).value_or("");
    if (message.empty())
        message = "upstream reported status " + std::to_string(status) + " for this item";
    return item_error(status, message, route);
}

}  // namespace

partition make_partition(std::string_view route_name, const config::coalesce_settings& settings,
                         const caller_request& request) {
    partition out;
    out.key.reserve(64);  // route name and credentials, most often: one allocation, not two
    const auto& p = settings.partition;
    append_field(out.key, route_name);

    for (const auto& name : p.path) {
        auto v = path_value(request.path_params, name);
        append_value(out.key, 'p', name, v);
        if (v) out.values.path.emplace(name, *v);
    }
    if (!p.query.empty()) {
        auto query = routes::parse_query(request.query);
        for (const auto& name : p.query) {
            auto v = first_query_value(query, name);
            append_value(out.key, 'q', name, v);
            if (v) out.values.query.emplace(name, *v);
        }
    }
    each_partition_header(p, [&](std::string_view name) {
        auto v = header_value(request, name);
        append_value(out.key, 'h', name, v);
        if (v) out.values.headers.emplace(std::string(name), *v);
    });
    if (!p.body.empty()) {
        lazy_body body(request.body);
        const json* doc = body.get();
        for (const auto& ptr_text : p.body) {
            const json* v = nullptr;
            if (doc)
                if (auto ptr = routes::json_pointer::parse(ptr_text)) v = ptr->find(*doc);
            append_value(out.key, 'b', ptr_text, v ? std::optional<std::string>(dump(*v)) : std::nullopt);
            if (v) out.values.body.emplace(ptr_text, *v);
        }
    }
    return out;
}

key_result extract_key(const config::coalesce_settings& settings, const caller_request& request) {
    const auto& ref = settings.key;
    auto fail = [](std::string message) { return key_result{std::nullopt, std::move(message)}; };
    auto quoted = [](std::string_view s) { return "\"" + std::string(s) + "\""; };
    auto generated = [] { return key_result{generate_correlation_id(), {}, true}; };
    const bool when_missing = ref.generate == config::key_generation::when_missing;
    if (ref.generate == config::key_generation::always) return generated();

    std::optional<std::string> key;
    switch (ref.source) {
        case config::value_source::path:
            key = path_value(request.path_params, ref.name);
            if (!key && when_missing) return generated();
            if (!key) return fail("path parameter " + quoted(ref.name) + " is missing");
            if (key->empty()) return fail("path parameter " + quoted(ref.name) + " is empty");
            break;
        case config::value_source::query:
            key = first_query_value(routes::parse_query(request.query), ref.name);
            if (!key && when_missing) return generated();
            if (!key) return fail("query parameter " + quoted(ref.name) + " is missing");
            if (key->empty()) return fail("query parameter " + quoted(ref.name) + " is empty");
            break;
        case config::value_source::header:
            key = header_value(request, ref.name);
            if (!key && when_missing) return generated();
            if (!key) return fail("header " + quoted(ref.name) + " is missing");
            if (key->empty()) return fail("header " + quoted(ref.name) + " is empty");
            break;
        case config::value_source::body: {
            auto pointer = routes::json_pointer::parse(ref.name);
            if (!pointer) return fail("item key " + quoted(ref.name) + " is not a valid JSON pointer");
            auto parsed = routes::parse_json(request.body);
            if (!parsed.ok()) return fail("request body is not valid JSON");
            const json& doc = parsed.value;
            const json* v = pointer->find(doc);
            if (!v && when_missing) return generated();
            if (!v) return fail("item key " + ref.name + " is missing from the request body");
            key = key_as_written(*pointer, *v, request.body);  // as answer entries name it
            if (!key)
                return fail("item key " + ref.name + " in the request body must be a string or an "
                            "integer, not " + std::string(v->type_name()));
            if (key->empty()) return fail("item key " + ref.name + " in the request body is empty");
            break;
        }
    }
    // In "ids=1,2,7" a key holding the separator would read upstream as several keys and
    // shift every answer matched by position: refuse it here, for this caller only.
    const auto& rq = settings.request;
    if (rq.encoding == config::batch_encoding::query_list && !rq.separator.empty() &&
        key->find(rq.separator) != std::string::npos)
        return fail("item key " + quoted(*key) + " contains the batch list separator " + quoted(rq.separator));
    return key_result{std::move(key), {}};
}

std::size_t item_cost(const config::coalesce_settings& settings, std::string_view key) {
    const auto& rq = settings.request;
    switch (rq.encoding) {
        case config::batch_encoding::query_list:
            return routes::url_encoded_size(key) + rq.separator.size();
        case config::batch_encoding::query_repeat:
            return rq.query_param.size() + routes::url_encoded_size(key) + 2;
        case config::batch_encoding::json_body:
            return dump(json(std::string(key))).size() + 1;
    }
    return key.size();
}

std::size_t item_cost(const nlohmann::json& item) { return dump(item).size() + 1; }

// 64 bits no one outside can guess: the random device's, and the clocks' where it has none.
static std::uint64_t random_seed() {
    std::uint64_t seed = 0;
    try {
        std::random_device rd;
        seed = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
    } catch (...) {
    }
    seed ^= static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    const auto wall = std::chrono::system_clock::now().time_since_epoch().count();
    seed ^= static_cast<std::uint64_t>(wall) * 0x9E3779B97F4A7C15ULL;
    return seed;
}

std::string generate_correlation_id() {
    static const std::string prefix = [] {
        const std::uint64_t seed = random_seed();
        char buf[16];
        std::snprintf(buf, sizeof buf, "bg-%06x-", static_cast<unsigned>((seed ^ (seed >> 29)) & 0xFFFFFF));
        return std::string(buf);
    }();
    static std::atomic<std::uint64_t> counter{0};
    const std::uint64_t n = counter.fetch_add(1, std::memory_order_relaxed) + 1;
    char hex[17];
    auto [end, ec] = std::to_chars(hex, hex + sizeof hex, n, 16);
    (void)ec;
    return prefix + std::string(hex, end);
}

item_build build_item(const config::coalesce_settings& settings, const caller_request& request,
                      const std::string& key) {
    const auto& rq = settings.request;
    lazy_body body(request.body);
    request_values mine(request, body);
    bool body_unusable = false;  // a body placeholder was asked for and the body is not JSON
    const std::string method = to_upper(request.method);

    // The caller's own values: everything for request.item; batch templates (per_caller false)
    // see only what a partition could hold.
    auto resolver = [&](bool per_caller) {
        return [&, per_caller](const placeholder& p, bool& known) -> std::optional<json> {
            if (p.source == "path" || p.source == "query" || p.source == "header" ||
                (p.source == "body" && (!p.name.empty() || per_caller))) {
                auto v = mine.get(p);
                if (!v && p.source == "body" && body.invalid()) body_unusable = true;
                return v;
            }
            if (per_caller) {
                if (p.source == "key") return json(key);
                if (p.source == "method") return json(method);
                if (p.source == "map") {
                    auto m = rq.maps.find(std::string(p.name));
                    if (m == rq.maps.end()) return std::nullopt;
                    auto v = m->second.find(method);
                    if (v == m->second.end()) return std::nullopt;
                    return v->second;
                }
            }
            known = false;
            return std::nullopt;
        };
    };

    item_build out;
    template_values values;
    json item;
    if (rq.item.is_null()) {
        // A query encoding sends only keys (batcher: send): no payload to build, compare or
        // free per caller. json_body sends this one, and merge_patch (json_body only) merges it.
        if (rq.encoding == config::batch_encoding::json_body) item = json(key);
    } else {
        values.resolve = resolver(true);
        item = rq.item;
        if (fill_template(item, values) == fill::remove) item = nullptr;
    }
    if (body_unusable) {
        out.error = "request body is not valid JSON";
        return out;
    }
    if (!values.error.empty()) {
        out.error = "cannot build the batch item: " + values.error;
        return out;
    }

    // Typed placeholders of the batch templates must convert for this caller's values too, so a
    // bad value fails this caller only, not the batch it would join.
    // (A path without placeholders, on a query encoding, has nothing to check.)
    const bool path_has_values = rq.path.find('{') != std::string::npos;
    if (path_has_values || rq.encoding == config::batch_encoding::json_body) {
        template_values batch;
        batch.resolve = resolver(false);
        check_typed_text(rq.path, batch);
        if (rq.encoding == config::batch_encoding::json_body) check_typed(rq.body_template, batch);
        if (!batch.error.empty()) {
            out.error = "cannot build the batch call: " + batch.error;
            return out;
        }
        // A path value of ".." would send the batch call to another resource.
        if (path_has_values && routes::has_dot_segment(routes::split_target(interpolate(rq.path, batch, true)).first)) {
            out.error = "cannot build the batch call: a path value is \".\" or \"..\"";
            return out;
        }
    }
    out.item = std::move(item);
    return out;
}

int apply_success_status(const config::coalesce_settings& settings, std::string_view method, int status) {
    if (status != 200 || settings.response.success_status.empty()) return status;
    auto it = settings.response.success_status.find(to_upper(method));
    return it == settings.response.success_status.end() ? status : it->second;
}

outgoing_request build_batch_request(const config::coalesce_settings& settings,
                                     const partition_values& values,
                                     const std::vector<std::string>& keys,
                                     const std::vector<nlohmann::json>& items) {
    const auto& rq = settings.request;
    const bool json_body = rq.encoding == config::batch_encoding::json_body;
    outgoing_request out;
    out.method = rq.method;
    template_values tv = partition_template_values(values);
    out.target = interpolate(rq.path, tv, true);

    if (!json_body) {
        // Join onto an existing query without doubling '?' or '&'.
        auto q = out.target.find('?');
        char sep = q == std::string::npos ? '?' : '&';
        if (!out.target.empty() && (out.target.back() == '?' || out.target.back() == '&')) sep = 0;
        auto add_sep = [&] {
            if (sep) out.target += sep;
            sep = '&';
        };
        if (rq.encoding == config::batch_encoding::query_list) {
            add_sep();
            out.target += rq.query_param;
            out.target += '=';
            for (std::size_t i = 0; i < keys.size(); ++i) {
                if (i) out.target += rq.separator;
                routes::append_url_encoded(out.target, keys[i]);
            }
        } else {
            for (const auto& k : keys) {
                add_sep();
                out.target += rq.query_param;
                out.target += '=';
                routes::append_url_encoded(out.target, k);
            }
        }
    }

    std::vector<std::string> names;
    each_partition_header(settings.partition, [&](std::string_view name) { names.emplace_back(name); });
    for (const auto& h : rq.forward_headers)
        if (std::find(names.begin(), names.end(), h) == names.end()) names.push_back(h);
    for (const auto& name : names) {
        if (never_forwarded(name, json_body)) continue;
        auto it = values.headers.find(name);
        if (it != values.headers.end()) out.headers.emplace_back(name, it->second);
    }

    if (json_body) {
        const json array = items.empty() ? json(keys) : json(items);
        tv.items = &array;
        json body = rq.body_template;
        if (fill_template(body, tv) == fill::remove) body = nullptr;
        out.body = dump(body);
        out.headers.emplace_back("content-type", "application/json");
    }
    return out;
}

split_outcome split_batch_response(const config::coalesce_settings& settings,
                                   std::string_view route_name, std::string_view body,
                                   std::vector<std::string> requested_keys, std::size_t max_json_depth) {
    const auto& rs = settings.response;
    split_outcome out;

    std::vector<compiled_list> lists;
    for (const auto& l : rs.lists) {
        auto c = compile(l);
        if (!c) {
            out.error = "route has an invalid JSON pointer in coalesce.response";
            return out;
        }
        lists.push_back(std::move(*c));
    }
    if (lists.empty()) {
        out.error = "route has no result list in coalesce.response";
        return out;
    }
    const bool by_position = lists.front().list->by_position;
    if (lists.size() > 1 && std::any_of(lists.begin(), lists.end(), [](const auto& c) { return c.list->by_position; })) {
        out.error = "route uses by_position with more than one result list";
        return out;
    }

    // The answer is checked, not parsed: each caller's part is read from its text. Only status
    // rules and response templates work on a parse (of the whole answer, then).
    const bool needs_parse = std::any_of(lists.begin(), lists.end(), [](const compiled_list& c) {
        return !c.rules.empty() || !c.list->body_template.is_null();
    });
    if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) {
        out.error = "upstream batch answer is empty";  // a 204, say: nothing to split
        return out;
    }
    routes::parsed_json parsed;
    bool may_repeat = true;  // a name repeated in an object somewhere (unknown after a parse)
    const auto status = needs_parse ? (parsed = routes::parse_json(body, max_json_depth)).status
                                    : routes::check_json(body, max_json_depth, &may_repeat);
    if (status == routes::json_status::too_deep) {
        out.error = "upstream batch answer is " + routes::json_depth_message(max_json_depth);
        return out;
    }
    if (status == routes::json_status::out_of_range) {
        out.error = "upstream batch answer holds a number beyond what the gateway reads (about ±1.8e308)";
        return out;
    }
    if (status != routes::json_status::ok) {
        out.error = "upstream batch answer is not valid JSON";
        return out;
    }
    // Each list's items (their texts; with several lists, an absent one has none), and their
    // parse when needed.
    struct list_items {
        bool present = false;
        std::vector<std::string_view> texts;
        const json* parsed = nullptr;  // the array, when needs_parse
        const json* item(std::size_t i) const { return parsed ? &(*parsed)[i] : nullptr; }
    };
    std::vector<list_items> arrays(lists.size());
    std::string texts;
    const std::string_view whole = routes::checked_value_text(body);  // checked or parsed above
    for (std::size_t li = 0; li < lists.size(); ++li) {
        const auto& c = lists[li];
        const auto at = c.items.find_in_value(whole, !may_repeat);
        texts += (texts.empty() ? "" : ", ") + (c.items.is_root() ? std::string("\"\"") : c.items.text());
        if (at && at->starts_with('[')) {
            auto elements = routes::json_array_elements(*at);
            const json* array = needs_parse ? c.items.find(parsed.value) : nullptr;
            // Never for a checked answer: the text and the parse read the same JSON.
            if (!elements || (needs_parse && (!array || !array->is_array() || array->size() != elements->size()))) {
                out.error = "upstream batch answer could not be read at " + texts;
                return out;
            }
            arrays[li] = list_items{true, std::move(*elements), array};
        } else if (at || lists.size() == 1) {
            out.error = c.items.is_root() ? "upstream batch answer is not a JSON array"
                                          : "upstream batch answer has no array at " + c.items.text();
            return out;
        }
    }
    if (std::none_of(arrays.begin(), arrays.end(), [](const list_items& a) { return a.present; })) {
        out.error = "upstream batch answer has none of the result lists (" + texts + ")";
        return out;
    }

    out.keys = std::move(requested_keys);
    const std::vector<std::string>& keys = out.keys;  // viewed below: they live as long as out
    if (by_position) {
        const list_items& items = arrays.front();
        if (items.texts.size() != keys.size()) {
            out.error = "upstream batch answer has " + std::to_string(items.texts.size()) +
                        " items for " + std::to_string(keys.size()) + " requested keys";
            return out;
        }
        out.items.reserve(keys.size());
        for (std::size_t i = 0; i < keys.size(); ++i)
            out.items.push_back(outcome_of(lists.front(), route_name, items.texts[i], items.item(i), may_repeat));
        return out;
    }

    // Most upstreams answer in the order asked. While the answer's entries name the requested
    // keys position by position, each is its own key's answer whatever the rules below make of
    // it (a key asked n times is answered by its n entries, in order): the whole answer in order
    // needs no look-up. The keys read before the first that differs are not read again below.
    std::size_t in_order = 0;
    if (lists.size() == 1 && arrays.front().texts.size() == keys.size()) {
        const auto& items = arrays.front().texts;
        while (in_order < keys.size()) {
            const auto key = read_entry_key(lists.front().key, items[in_order], may_repeat, [](const std::string&) {});
            if (!key.last || *key.last != keys[in_order] || key.twofold) break;
            ++in_order;
        }
        if (in_order == keys.size()) {
            out.items.reserve(keys.size());
            for (std::size_t i = 0; i < keys.size(); ++i)
                out.items.push_back(
                    outcome_of(lists.front(), route_name, items[i], arrays.front().item(i), may_repeat));
            return out;
        }
    }

    // Requested keys with how often each was asked (more than once only under same_key
    // in_batch: the n-th entry for a key answers its n-th operation), and the answer's entries
    // for each. The distinct keys in one array, each with its first entry inline, found through
    // an open-addressed table of their positions: two allocations per batch, not one per key,
    // and one hash per key and per entry instead of a sort and a binary search for each.
    struct seen {
        std::size_t list;
        std::size_t index;      // in its list
        std::string_view text;  // the item's text in the answer
        bool twofold = false;   // the item names another key too (read_entry_key)
    };
    struct wanted {
        std::string_view key;      // a view into keys
        std::size_t asked = 0;     // times keys holds it
        std::size_t answered = 0;  // of those, answered so far (below)
        std::size_t found = 0;     // entries in the answer
        seen first{};
        std::vector<seen> more{};  // entries after the first
        const seen& entry(std::size_t i) const { return i == 0 ? first : more[i - 1]; }
    };
    std::vector<wanted> requested;
    requested.reserve(keys.size());
    std::size_t slots = 8;
    while (slots < 2 * keys.size()) slots *= 2;  // at most half full: short probes
    constexpr std::uint32_t empty_slot = ~std::uint32_t{0};
    std::vector<std::uint32_t> table(slots, empty_slot);  // positions in requested
    // Seeded per process: keys come from callers, and a table whose keys all fall into one
    // run of slots would make every look-up walk it.
    static const auto seed = static_cast<std::size_t>(random_seed());
    auto hash = [](std::string_view key) {
        std::size_t h = seed;
        boost::hash_range(h, key.begin(), key.end());
        return h;
    };
    // The slot that holds key, or the empty one where it would go.
    auto slot_of = [&](std::string_view key) -> std::uint32_t& {
        for (std::size_t at = hash(key) & (slots - 1);; at = (at + 1) & (slots - 1))
            if (table[at] == empty_slot || requested[table[at]].key == key) return table[at];
    };
    for (const auto& k : keys) {
        std::uint32_t& at = slot_of(k);
        if (at != empty_slot) {
            ++requested[at].asked;
            continue;
        }
        at = static_cast<std::uint32_t>(requested.size());
        requested.push_back(wanted{k, 1});
    }
    auto find = [&](std::string_view key) -> wanted* {
        const std::uint32_t at = slot_of(key);
        return at == empty_slot ? nullptr : &requested[at];
    };
    for (std::size_t li = 0; li < lists.size(); ++li) {
        const auto& items = arrays[li].texts;
        for (std::size_t i = 0; i < items.size(); ++i) {
            seen entry{li, i, items[i]};
            auto add = [&](wanted& w) {
                if (w.found++ == 0)
                    w.first = entry;
                else
                    w.more.push_back(entry);
            };
            if (li == 0 && i < in_order) {  // read above: keys[i], once
                add(*find(keys[i]));
                continue;
            }
            bool named = false;  // a requested key
            auto name = [&](wanted* w) {
                if (!w) return;
                // Once per key, though several copies name it.
                if (w->found > 0 && w->entry(w->found - 1).list == li && w->entry(w->found - 1).index == i) return;
                add(*w);
                named = true;
            };
            const auto read = read_entry_key(lists[li].key, items[i], may_repeat, [&](const std::string& other) {
                entry.twofold = true;  // another copy's key: the entry names two
                name(find(other));
            });
            entry.twofold = read.twofold;
            if (read.last) name(find(*read.last));
            if (!named) ++out.ignored_items;
        }
    }

    auto outcome = [&](const seen& e) {
        return outcome_of(lists[e.list], route_name, e.text, arrays[e.list].item(e.index), may_repeat);
    };
    auto ambiguous = [&](const std::string& key, const std::string& why) {
        return item_outcome{502, error_body(gateway_error::upstream_bad_response,
                                            "upstream returned key \"" + key + "\" " + why, route_name)};
    };
    out.items.reserve(keys.size());
    for (const auto& key : keys) {
        wanted& w = *find(key);
        const std::size_t n = w.answered++;
        if (w.found == 0) {
            out.items.push_back({rs.missing_status,
                                 error_body("not_found", "no item with key \"" + key + "\" in the upstream batch answer",
                                            route_name)});
            continue;
        }
        // An entry that names two keys (its key's member name repeats) is the key's answer to a
        // reader of the last copy and not to one of the first, or the other way round: where it
        // could decide the answer, neither reading is taken.
        const auto named_twice = [&](std::optional<std::size_t> in_list) {
            for (std::size_t i = 0; i < w.found; ++i)
                if (w.entry(i).twofold && (!in_list || w.entry(i).list == *in_list)) return true;
            return false;
        };
        static constexpr const char* two_keys = "in an item that names two keys (its key's member name repeats)";
        if (w.asked == 1) {
            // First list wins; a second, different entry in that same list is ambiguous. (A
            // two-key entry in a later list decides nothing: the first list has the key either way.)
            const seen& first = w.first;
            bool twice = false;
            for (std::size_t i = 1; i < w.found && !twice; ++i)
                // The bytes go on: equal as parsed is not enough (1.10 and 1.1 differ), and the
                // same bytes parse alike.
                twice = w.entry(i).list == first.list && w.entry(i).text != first.text;
            out.items.push_back(named_twice(first.list) ? ambiguous(key, two_keys)
                                : twice                 ? ambiguous(key, "more than once")
                                                        : outcome(first));
        } else if (named_twice(std::nullopt)) {
            out.items.push_back(ambiguous(key, two_keys));  // the entries' count differs by reading
        } else if (w.found == w.asked) {
            out.items.push_back(outcome(w.entry(n)));
        } else {
            out.items.push_back(ambiguous(key, std::to_string(w.found) + " times for " + std::to_string(w.asked) +
                                                   " operations"));
        }
    }
    return out;
}

const item_outcome* split_outcome::find(std::string_view key, std::size_t occurrence) const {
    for (std::size_t i = 0; i < keys.size() && i < items.size(); ++i)
        if (keys[i] == key && occurrence-- == 0) return &items[i];
    return nullptr;
}

std::size_t batch_overhead(const config::coalesce_settings& settings, const partition_values& values) {
    const auto& rq = settings.request;
    const outgoing_request empty = build_batch_request(settings, values, {}, {});
    // n items: the empty call plus each item's cost, less the one separator n items do not need.
    switch (rq.encoding) {
        case config::batch_encoding::json_body: return empty.body.size() - std::min<std::size_t>(1, empty.body.size());
        case config::batch_encoding::query_list:
            return empty.target.size() - std::min(rq.separator.size(), empty.target.size());
        case config::batch_encoding::query_repeat: {
            // The first key needs no '?' or '&' when the path already ends in one.
            const bool joined = !empty.target.empty() && (empty.target.back() == '?' || empty.target.back() == '&');
            return empty.target.size() - (joined ? 1 : 0);
        }
    }
    return 0;
}

namespace {

// The name a caller value is stored under: "path.id", "body./title", "method", "body".
std::string value_name(const placeholder& p) {
    return p.name.empty() ? std::string(p.source) : std::string(p.source) + "." + std::string(p.name);
}

bool answer_side(std::string_view source) { return source == "item" || source == "status" || source == "key"; }

}  // namespace

nlohmann::json caller_values(const config::coalesce_settings& settings, const caller_request& request) {
    const auto& lists = settings.response.lists;
    if (std::all_of(lists.begin(), lists.end(), [](const auto& l) { return l.body_template.is_null(); }))
        return nullptr;  // no template: nothing to keep, nothing allocated per caller
    json out = json::object();
    lazy_body body(request.body);
    request_values mine(request, body);
    template_values values;
    values.resolve = [&](const placeholder& p, bool& known) -> std::optional<json> {
        known = false;  // only collecting: the template copy is thrown away
        if (answer_side(p.source)) return std::nullopt;
        const std::string name = value_name(p);
        if (out.contains(name)) return std::nullopt;
        std::optional<json> v = p.source == "method" ? json(to_upper(request.method)) : mine.get(p);
        if (v) out[name] = std::move(*v);
        return std::nullopt;
    };
    for (const auto& l : settings.response.lists) {
        if (l.body_template.is_null()) continue;
        json copy = l.body_template;
        fill_template(copy, values);
    }
    return out;
}

rendered_answer render_answer(const item_outcome& outcome, const nlohmann::json& caller, std::string_view key) {
    rendered_answer out;
    if (!outcome.render) {
        out.body = outcome.body;
        return out;
    }
    template_values values;
    values.resolve = [&](const placeholder& p, bool& known) -> std::optional<json> {
        if (p.source == "item") {
            if (p.name.empty()) return outcome.entry;
            auto ptr = routes::json_pointer::parse(p.name);
            const json* v = ptr ? ptr->find(outcome.entry) : nullptr;
            if (!v) return std::nullopt;
            return *v;
        }
        if (p.source == "status") return json(outcome.status);
        if (p.source == "key") return json(std::string(key));
        if (p.source == "items" || p.source == "map") {
            known = false;
            return std::nullopt;
        }
        auto it = caller.find(value_name(p));
        if (it == caller.end()) return std::nullopt;
        return *it;
    };
    json body = outcome.render->body_template;
    if (fill_template(body, values) == fill::remove) body = json::object();
    if (!values.error.empty()) {
        out.error = "cannot build the answer from the upstream item: " + values.error;
        return out;
    }
    out.body = dump(body);
    return out;
}

std::optional<std::vector<std::string>> named_failures(const config::coalesce_settings& settings, std::string_view body,
                                                       std::size_t max_json_depth) {
    const auto& f = settings.failed_items;
    if (!f.configured()) return std::nullopt;
    auto parsed = routes::parse_json(body, max_json_depth);
    if (!parsed.ok()) return std::nullopt;
    auto items_ptr = routes::json_pointer::parse(f.items);
    auto when = compile_when(f.when);
    if (!items_ptr || !when) return std::nullopt;
    const json* items = items_ptr->find(parsed.value);
    if (!items || !items->is_array()) return std::nullopt;
    std::vector<routes::json_pointer> key_ptrs;
    for (const auto& k : f.key) {
        auto p = routes::json_pointer::parse(k);
        if (!p) return std::nullopt;
        key_ptrs.push_back(*p);
    }
    const auto texts = element_texts(*items_ptr, body, *items);
    std::vector<std::string> out;
    for (std::size_t i = 0; i < items->size(); ++i) {
        const json& entry = (*items)[i];
        if (!all_equal(*when, entry)) continue;
        if (auto k = answer_key(key_ptrs, entry, texts[i])) out.push_back(std::move(*k));
    }
    if (out.empty()) return std::nullopt;
    return out;
}

}  // namespace batchgate::coalescer
