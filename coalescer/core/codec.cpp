#include "coalescer/core/codec.hpp"

#include <algorithm>
#include <unordered_set>

#include "gateway/errors.hpp"
#include "routes/json_pointer.hpp"

namespace batchgate::coalescer {

namespace {

using json = nlohmann::json;
constexpr auto replace_invalid = json::error_handler_t::replace;

std::string dump(const json& j) { return j.dump(-1, ' ', false, replace_invalid); }

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

// Length-prefixed, so no value can forge a separator: "<len>:<bytes>".
void append_field(std::string& out, std::string_view text) {
    out += std::to_string(text.size());
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

// The partition's headers in config order: configured ones, then credentials.
std::vector<std::string> partition_header_names(const config::partition_settings& p) {
    std::vector<std::string> names = p.headers;
    if (p.credentials)
        for (const char* h : {"authorization", "cookie"})
            if (std::find(names.begin(), names.end(), h) == names.end()) names.emplace_back(h);
    return names;
}

// Integer JSON numbers become their text; strings stay as they are; anything else is no key.
std::optional<std::string> key_text(const json& v) {
    if (v.is_string()) return v.get<std::string>();
    if (v.is_number_integer()) return v.dump();
    return std::nullopt;
}

// Value of a {source.name} placeholder, or nullopt when the caller did not send it.
// found is false when the text is not a known placeholder at all.
std::optional<std::string> placeholder_value(const partition_values& values,
                                             std::string_view inner, bool& found) {
    found = true;
    auto dot = inner.find('.');
    if (dot != std::string_view::npos) {
        auto source = inner.substr(0, dot);
        std::string name(inner.substr(dot + 1));
        const std::map<std::string, std::string>* m = nullptr;
        if (source == "path") m = &values.path;
        else if (source == "query") m = &values.query;
        else if (source == "header") m = &values.headers;
        if (m && !name.empty()) {
            auto it = m->find(name);
            if (it == m->end()) return std::nullopt;
            return it->second;
        }
    }
    found = false;
    return std::nullopt;
}

// Replaces every {path.X}/{query.X}/{header.X} in text; absent values become "".
// Unknown brace groups (e.g. "{items}" inside a longer string) are kept verbatim.
std::string interpolate(std::string_view text, const partition_values& values, bool url_encoded) {
    std::string out;
    out.reserve(text.size());
    std::size_t i = 0;
    while (i < text.size()) {
        auto open = text.find('{', i);
        if (open == std::string_view::npos) break;
        auto close = text.find('}', open + 1);
        if (close == std::string_view::npos) break;
        out.append(text.substr(i, open - i));
        bool found = false;
        auto v = placeholder_value(values, text.substr(open + 1, close - open - 1), found);
        if (!found) {
            out.append(text.substr(open, close - open + 1));
        } else if (v) {
            out += url_encoded ? routes::url_encode(*v) : *v;
        }
        i = close + 1;
    }
    out.append(text.substr(std::min(i, text.size())));
    return out;
}

enum class fill { keep, remove };

// Rewrites string values of the body template in place; returns remove when the value is a
// lone placeholder the caller did not send.
fill fill_template(json& node, const partition_values& values, const std::vector<std::string>& keys) {
    if (node.is_string()) {
        const auto& s = node.get_ref<const std::string&>();
        if (s == "{items}") {
            node = json(keys);
            return fill::keep;
        }
        if (s.size() > 2 && s.front() == '{' && s.back() == '}' &&
            s.find_first_of("{}", 1) == s.size() - 1) {
            bool found = false;
            auto v = placeholder_value(values, std::string_view(s).substr(1, s.size() - 2), found);
            if (found) {
                if (!v) return fill::remove;
                node = *v;
                return fill::keep;
            }
        }
        if (s.find('{') != std::string::npos) node = interpolate(s, values, false);
        return fill::keep;
    }
    if (node.is_object()) {
        for (auto it = node.begin(); it != node.end();) {
            if (fill_template(*it, values, keys) == fill::remove) it = node.erase(it);
            else ++it;
        }
    } else if (node.is_array()) {
        json kept = json::array();
        for (auto& element : node)
            if (fill_template(element, values, keys) == fill::keep) kept.push_back(std::move(element));
        node = std::move(kept);
    }
    return fill::keep;
}

// Headers the upstream client owns, or that would be wrong for a rebuilt request.
bool never_forwarded(std::string_view name, bool json_body) {
    return name == "host" || name == "content-length" || name == "transfer-encoding" ||
           name == "connection" || (json_body && name == "content-type");
}

std::string status_text(const json& v) {
    if (v.is_string()) return v.get<std::string>();
    if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
    if (v.is_number()) return v.dump();
    return {};
}

std::optional<int> status_code_of(const json& v) {
    int code = 0;
    if (v.is_number_integer()) {
        auto n = v.get<std::int64_t>();
        if (n < 100 || n > 599) return std::nullopt;
        code = static_cast<int>(n);
    } else if (v.is_number_float()) {
        double d = v.get<double>();
        if (!(d >= 100 && d <= 599) || d != static_cast<double>(static_cast<int>(d)))
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

// The answer for one item of the batch.
item_outcome outcome_of(const config::batch_response_settings& rs, std::string_view route,
                        const json& item, const std::optional<routes::json_pointer>& status_code_ptr,
                        const std::optional<routes::json_pointer>& status_ptr,
                        const routes::json_pointer& body_ptr,
                        const std::optional<routes::json_pointer>& error_ptr) {
    int status = 200;
    std::optional<int> from_code;
    if (status_code_ptr)
        if (const json* v = status_code_ptr->find(item)) from_code = status_code_of(*v);
    const json* status_value = status_ptr ? status_ptr->find(item) : nullptr;
    if (from_code) {
        status = *from_code;
    } else if (status_value) {
        auto text = status_text(*status_value);
        auto it = rs.status_map.find(text);
        if (it == rs.status_map.end())
            return item_error(502, "upstream reported unknown item status " + dump(*status_value),
                              route);
        status = it->second;
    }

    if (status >= 200 && status < 300) {
        const json* body = body_ptr.find(item);
        if (!body) return item_error(502, "upstream item has no " + body_ptr.text(), route);
        return {status, dump(*body)};
    }
    std::string message;
    if (error_ptr)
        if (const json* e = error_ptr->find(item); e && e->is_string()) message = e->get<std::string>();
    if (message.empty())
        message = "upstream reported status " + std::to_string(status) + " for this item";
    return item_error(status, message, route);
}

}  // namespace

partition make_partition(std::string_view route_name, const config::coalesce_settings& settings,
                         const caller_request& request) {
    partition out;
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
    for (const auto& name : partition_header_names(p)) {
        auto v = header_value(request, name);
        append_value(out.key, 'h', name, v);
        if (v) out.values.headers.emplace(name, *v);
    }
    return out;
}

key_result extract_key(const config::coalesce_settings& settings, const caller_request& request) {
    const auto& ref = settings.key;
    auto fail = [](std::string message) { return key_result{std::nullopt, std::move(message)}; };
    auto quoted = [](std::string_view s) { return "\"" + std::string(s) + "\""; };

    std::optional<std::string> key;
    switch (ref.source) {
        case config::value_source::path:
            key = path_value(request.path_params, ref.name);
            if (!key) return fail("path parameter " + quoted(ref.name) + " is missing");
            if (key->empty()) return fail("path parameter " + quoted(ref.name) + " is empty");
            break;
        case config::value_source::query:
            key = first_query_value(routes::parse_query(request.query), ref.name);
            if (!key) return fail("query parameter " + quoted(ref.name) + " is missing");
            if (key->empty()) return fail("query parameter " + quoted(ref.name) + " is empty");
            break;
        case config::value_source::header:
            key = header_value(request, ref.name);
            if (!key) return fail("header " + quoted(ref.name) + " is missing");
            if (key->empty()) return fail("header " + quoted(ref.name) + " is empty");
            break;
        case config::value_source::body: {
            auto pointer = routes::json_pointer::parse(ref.name);
            if (!pointer) return fail("item key " + quoted(ref.name) + " is not a valid JSON pointer");
            auto doc = json::parse(request.body, nullptr, false);
            if (doc.is_discarded()) return fail("request body is not valid JSON");
            const json* v = pointer->find(doc);
            if (!v) return fail("item key " + ref.name + " is missing from the request body");
            key = key_text(*v);
            if (!key)
                return fail("item key " + ref.name + " in the request body must be a string or an "
                            "integer, not " + std::string(v->type_name()));
            if (key->empty()) return fail("item key " + ref.name + " in the request body is empty");
            break;
        }
    }
    return key_result{std::move(key), {}};
}

std::size_t item_cost(const config::coalesce_settings& settings, std::string_view key) {
    const auto& rq = settings.request;
    switch (rq.encoding) {
        case config::batch_encoding::query_list:
            return routes::url_encode(key).size() + rq.separator.size();
        case config::batch_encoding::query_repeat:
            return rq.query_param.size() + routes::url_encode(key).size() + 2;
        case config::batch_encoding::json_body:
            return dump(json(std::string(key))).size() + 1;
    }
    return key.size();
}

outgoing_request build_batch_request(const config::coalesce_settings& settings,
                                     const partition_values& values,
                                     const std::vector<std::string>& keys) {
    const auto& rq = settings.request;
    const bool json_body = rq.encoding == config::batch_encoding::json_body;
    outgoing_request out;
    out.method = rq.method;
    out.target = interpolate(rq.path, values, true);

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
                out.target += routes::url_encode(keys[i]);
            }
        } else {
            for (const auto& k : keys) {
                add_sep();
                out.target += rq.query_param;
                out.target += '=';
                out.target += routes::url_encode(k);
            }
        }
    }

    std::vector<std::string> names = partition_header_names(settings.partition);
    for (const auto& h : rq.forward_headers)
        if (std::find(names.begin(), names.end(), h) == names.end()) names.push_back(h);
    for (const auto& name : names) {
        if (never_forwarded(name, json_body)) continue;
        auto it = values.headers.find(name);
        if (it != values.headers.end()) out.headers.emplace_back(name, it->second);
    }

    if (json_body) {
        json body = rq.body_template;
        if (fill_template(body, values, keys) == fill::remove) body = nullptr;
        out.body = dump(body);
        out.headers.emplace_back("content-type", "application/json");
    }
    return out;
}

split_outcome split_batch_response(const config::coalesce_settings& settings,
                                   std::string_view route_name, std::string_view body,
                                   const std::vector<std::string>& keys) {
    const auto& rs = settings.response;
    split_outcome out;

    bool bad_pointer = false;
    auto items_ptr = routes::json_pointer::parse(rs.items);
    auto key_ptr = routes::json_pointer::parse(rs.key);
    auto body_ptr = routes::json_pointer::parse(rs.body);
    auto status_code_ptr = optional_pointer(rs.status_code, bad_pointer);
    auto status_ptr = optional_pointer(rs.status, bad_pointer);
    auto error_ptr = optional_pointer(rs.error, bad_pointer);
    if (!items_ptr || !body_ptr || (!rs.by_position && !key_ptr) || bad_pointer) {
        out.error = "route has an invalid JSON pointer in coalesce.response";
        return out;
    }

    auto doc = json::parse(body, nullptr, false);
    if (doc.is_discarded()) {
        out.error = "upstream batch answer is not valid JSON";
        return out;
    }
    const json* items = items_ptr->find(doc);
    if (!items || !items->is_array()) {
        out.error = items_ptr->is_root() ? "upstream batch answer is not a JSON array"
                                         : "upstream batch answer has no array at " + rs.items;
        return out;
    }

    auto outcome = [&](const json& item) {
        return outcome_of(rs, route_name, item, status_code_ptr, status_ptr, *body_ptr, error_ptr);
    };

    if (rs.by_position) {
        if (items->size() != keys.size()) {
            out.error = "upstream batch answer has " + std::to_string(items->size()) +
                        " items for " + std::to_string(keys.size()) + " requested keys";
            return out;
        }
        for (std::size_t i = 0; i < keys.size(); ++i) out.items[keys[i]] = outcome((*items)[i]);
        return out;
    }

    // First item seen per requested key; a second, different item marks the key ambiguous.
    std::unordered_map<std::string, const json*> found;
    std::unordered_set<std::string> requested(keys.begin(), keys.end());
    std::unordered_set<std::string> duplicated;
    for (const auto& item : *items) {
        const json* k = key_ptr->find(item);
        auto key = k ? key_text(*k) : std::nullopt;
        if (!key || !requested.contains(*key)) {
            ++out.ignored_items;
            continue;
        }
        auto [it, inserted] = found.emplace(*key, &item);
        if (!inserted && *it->second != item) duplicated.insert(*key);
    }

    for (const auto& key : keys) {
        if (duplicated.contains(key)) {
            out.items[key] = {502, error_body(gateway_error::upstream_bad_response,
                                              "upstream returned key \"" + key + "\" more than once",
                                              route_name)};
        } else if (auto it = found.find(key); it != found.end()) {
            out.items[key] = outcome(*it->second);
        } else {
            out.items[key] = {rs.missing_status,
                              error_body("not_found",
                                         "no item with key \"" + key + "\" in the upstream batch answer",
                                         route_name)};
        }
    }
    return out;
}

}  // namespace batchgate::coalescer
