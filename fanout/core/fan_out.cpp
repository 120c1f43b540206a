#include "fanout/core/fan_out.hpp"

#include <ctime>

#include "text/json_pointer.hpp"
#include "text/json_text.hpp"
#include "text/url.hpp"

namespace batchgate::fanout {

namespace {

// {prefix./pointer} into doc; absent when the pointer finds nothing.
std::optional<json> pointer_value(const json& doc, std::string_view pointer) {
    auto p = routes::json_pointer::parse(pointer);
    if (!p) return std::nullopt;
    const json* v = p->find(doc);
    if (!v) return std::nullopt;
    return *v;
}

// Placeholders every template may use: the client's body and headers.
std::optional<json> client_value(const fan_out_call& call, const header_lookup& header, std::string_view name,
                                 bool& known) {
    known = true;
    if (name.starts_with("body.")) return pointer_value(call.body, name.substr(5));
    if (name.starts_with("header.")) {
        std::string lower(name.substr(7));
        for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        if (!header) return std::nullopt;
        auto v = header(lower);
        if (!v) return std::nullopt;
        return json(*v);
    }
    known = false;
    return std::nullopt;
}

std::optional<json> item_value(const fan_out_call& call, std::size_t index, std::string_view name, bool& known) {
    known = true;
    if (name == "item") return call.items[index];
    if (name == "index") return json(index);
    if (name.starts_with("item.")) return pointer_value(call.items[index], name.substr(5));
    known = false;
    return std::nullopt;
}

resolver request_resolver(const fan_out_call& call, const header_lookup& header, std::size_t index) {
    return [&call, &header, index](std::string_view name) -> std::optional<json> {
        bool known = false;
        if (auto v = item_value(call, index, name, known); known) return v;
        return client_value(call, header, name, known);
    };
}

}  // namespace

fan_out_call parse_fan_out(const config::fan_out_settings& settings, std::string_view body) {
    fan_out_call out;
    auto parsed = routes::parse_json(body);
    if (!parsed.ok()) {
        out.error = parsed.status == routes::json_status::too_deep
                        ? "request body is " + routes::json_depth_message(routes::max_json_depth_cap)
                        : "request body is not JSON";
        return out;
    }
    out.body = std::move(parsed.value);
    for (const auto& [pointer, expected] : settings.require) {
        auto v = pointer_value(out.body, pointer);
        if (!v || *v != expected) {
            out.error = "request body must have " + pointer + " = " + expected.dump(-1, ' ', false, json::error_handler_t::replace);
            return out;
        }
    }
    auto items = pointer_value(out.body, settings.items);
    if (!items || !items->is_array()) {
        out.error = "request body must have an array at " + (settings.items.empty() ? std::string("the root") : settings.items);
        return out;
    }
    if (items->size() < settings.min_items || items->size() > settings.max_items) {
        out.error = std::to_string(items->size()) + " items at " + settings.items + ": between " +
                    std::to_string(settings.min_items) + " and " + std::to_string(settings.max_items) + " are accepted";
        return out;
    }
    out.items.assign(items->begin(), items->end());
    return out;
}

item_request build_item_request(const config::fan_out_settings& settings, const fan_out_call& call,
                                const header_lookup& header, std::size_t index) {
    const auto& rs = settings.request;
    const resolver resolve = request_resolver(call, header, index);
    item_request out;
    out.method = rs.method;
    auto path = render_text(rs.path, resolve, true);
    if (!path.error.empty() || !path.text) {
        out.error = path.error.empty() ? "request.path " + rs.path + " has no value for this item" : path.error;
        return out;
    }
    out.target = std::move(*path.text);
    // Caller values must not change which resource is asked: no ".." and no empty segment
    // ("/api/v1/activities/" for an empty or null item is the collection, not an item).
    const std::string_view item_path = routes::split_target(out.target).first;
    const std::string_view template_path = routes::split_target(rs.path).first;
    if (routes::has_dot_segment(item_path)) {
        out.error = "request.path would hold a \".\" or \"..\" segment for this item";
        return out;
    }
    if ((item_path.find("//") != std::string_view::npos && template_path.find("//") == std::string_view::npos) ||
        (!item_path.empty() && item_path.back() == '/' && (template_path.empty() || template_path.back() != '/'))) {
        out.error = "request.path would hold an empty segment for this item";
        return out;
    }
    char sep = out.target.find('?') == std::string::npos ? '?' : '&';
    for (const auto& [name, tmpl] : rs.query) {
        auto v = render_text(tmpl, resolve, true);
        if (!v.error.empty()) {
            out.error = v.error;
            return out;
        }
        if (!v.text) continue;  // optional parameter the client did not send
        out.target += sep;
        out.target += routes::url_encode(name);
        out.target += '=';
        out.target += *v.text;
        sep = '&';
    }
    if (header)
        for (const auto& name : rs.forward_headers)
            if (auto v = header(name)) out.headers.emplace_back(name, *v);
    for (const auto& [name, tmpl] : rs.headers) {
        auto v = render_text(tmpl, resolve, false);
        if (!v.error.empty()) {
            out.error = v.error;
            return out;
        }
        if (!v.text) continue;
        std::erase_if(out.headers, [&n = name](const auto& h) { return h.first == n; });
        out.headers.emplace_back(name, std::move(*v.text));
    }
    if (!rs.body.is_null()) {
        auto b = render_json(rs.body, resolve);
        if (!b.error.empty()) {
            out.error = b.error;
            return out;
        }
        if (b.value) {
            out.body = b.value->dump(-1, ' ', false, json::error_handler_t::replace);
            bool has_type = false;
            for (const auto& h : out.headers) has_type = has_type || h.first == "content-type";
            if (!has_type) out.headers.emplace_back("content-type", "application/json");
        }
    }
    return out;
}

json render_item(const config::fan_out_settings& settings, const fan_out_call& call, const header_lookup& header,
                 std::size_t index, const item_result& result) {
    const resolver resolve = [&](std::string_view name) -> std::optional<json> {
        if (name == "response") return result.response;
        if (name == "status") return json(result.status);
        if (name.starts_with("response.")) return pointer_value(result.response, name.substr(9));
        bool known = false;
        if (auto v = item_value(call, index, name, known); known) return v;
        return client_value(call, header, name, known);
    };
    const json& tmpl = result.ok() ? settings.response.success : settings.response.error;
    auto r = render_json(tmpl, resolve);
    if (!r.error.empty())
        return json{{"error", "gateway could not render this item: " + r.error}, {"status_code", result.status}};
    return r.value ? std::move(*r.value) : json(nullptr);
}

std::string render_envelope(const config::fan_out_settings& settings, const fan_out_call& call,
                            const header_lookup& header, std::vector<json> entries, std::size_t succeeded,
                            std::chrono::system_clock::time_point now) {
    const std::size_t total = entries.size();
    json results(std::move(entries));
    const resolver resolve = [&](std::string_view name) -> std::optional<json> {
        if (name == "results") return results;
        if (name == "count.total") return json(total);
        if (name == "count.succeeded") return json(succeeded);
        if (name == "count.failed") return json(total - succeeded);
        if (name == "now") return json(utc_iso8601(now));
        bool known = false;
        return client_value(call, header, name, known);
    };
    auto r = render_json(settings.response.envelope, resolve);
    if (!r.error.empty() || !r.value) return json{{"results", results}}.dump(-1, ' ', false, json::error_handler_t::replace);
    return r.value->dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string utc_iso8601(std::chrono::system_clock::time_point t) {
    const std::time_t secs = std::chrono::system_clock::to_time_t(t);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

}  // namespace batchgate::fanout
