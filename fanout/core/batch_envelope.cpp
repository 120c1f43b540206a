#include "fanout/core/batch_envelope.hpp"

#include <algorithm>
#include <cctype>
#include <map>

#include "fanout/core/dependency_plan.hpp"
#include "text/json_text.hpp"
#include "text/url.hpp"

namespace batchgate::fanout {

namespace {

using json = nlohmann::json;

bool is_token(std::string_view s) {
    if (s.empty()) return false;
    for (char c : s)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos))
            return false;
    return true;
}

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
           });
}

// Ids may be written as strings or whole numbers; both compare as text.
std::optional<std::string> id_text(const json& v) {
    if (v.is_string() && !v.get_ref<const std::string&>().empty()) return v.get<std::string>();
    if (v.is_number_integer()) return v.dump();
    return std::nullopt;
}

parsed_envelope fail(envelope_error e, std::string message) {
    parsed_envelope out;
    out.error = e;
    out.message = std::move(message);
    return out;
}

}  // namespace

parsed_envelope parse_envelope(std::string_view body, std::size_t max_requests) {
    const auto parsed = routes::parse_json(body);
    if (parsed.status == routes::json_status::too_deep)
        return fail(envelope_error::bad_request, "request body is " + routes::json_depth_message(routes::max_json_depth_cap));
    if (!parsed.ok()) return fail(envelope_error::bad_request, "request body is not JSON");
    const json& doc = parsed.value;
    if (!doc.is_object() || !doc.contains("requests") || !doc["requests"].is_array())
        return fail(envelope_error::bad_request, "request body must be an object with a \"requests\" array");
    const json& list = doc["requests"];
    if (list.empty()) return fail(envelope_error::bad_request, "\"requests\" is empty");
    if (list.size() > max_requests)
        return fail(envelope_error::too_many, std::to_string(list.size()) + " sub-requests exceed the limit of " +
                                                  std::to_string(max_requests) + " per batch call");

    parsed_envelope out;
    std::map<std::string, std::size_t> index;
    std::vector<std::vector<std::string>> depends(list.size());
    for (std::size_t i = 0; i < list.size(); ++i) {
        const json& e = list[i];
        const std::string where = "requests[" + std::to_string(i) + "]";
        if (!e.is_object()) return fail(envelope_error::bad_request, where + " is not an object");
        sub_request r;
        auto id = e.contains("id") ? id_text(e["id"]) : std::nullopt;
        if (!id) return fail(envelope_error::bad_request, where + ".id must be a non-empty string");
        r.id = *id;
        if (!index.emplace(r.id, i).second)
            return fail(envelope_error::bad_request, "duplicate sub-request id \"" + r.id + "\"");
        if (!e.contains("method") || !e["method"].is_string() || !is_token(e["method"].get_ref<const std::string&>()))
            return fail(envelope_error::bad_request, where + ".method must be an HTTP method");
        r.method = e["method"].get<std::string>();
        std::transform(r.method.begin(), r.method.end(), r.method.begin(),
                       [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
        if (!e.contains("url") || !e["url"].is_string())
            return fail(envelope_error::bad_request, where + ".url must be a string");
        r.url = e["url"].get<std::string>();
        if (e.contains("headers")) {
            const json& h = e["headers"];
            if (!h.is_object()) return fail(envelope_error::bad_request, where + ".headers must be an object");
            for (auto it = h.begin(); it != h.end(); ++it) {
                if (!is_token(it.key()) || !(it->is_string() || it->is_number() || it->is_boolean()))
                    return fail(envelope_error::bad_request, where + ".headers." + it.key() + " must be a string");
                std::string v = it->is_string() ? it->get<std::string>() : it->dump();
                if (v.find_first_of("\r\n") != std::string::npos)
                    return fail(envelope_error::bad_request, where + ".headers." + it.key() + " holds a line break");
                r.headers.emplace_back(it.key(), std::move(v));
            }
        }
        if (e.contains("body") && !e["body"].is_null()) r.body = e["body"];
        if (e.contains("dependsOn")) {
            const json& d = e["dependsOn"];
            if (auto single = id_text(d)) {
                depends[i].push_back(*single);
            } else if (d.is_array()) {
                for (const auto& x : d) {
                    auto t = id_text(x);
                    if (!t) return fail(envelope_error::bad_request, where + ".dependsOn must list sub-request ids");
                    depends[i].push_back(*t);
                }
            } else {
                return fail(envelope_error::bad_request, where + ".dependsOn must list sub-request ids");
            }
        }
        out.requests.push_back(std::move(r));
    }

    std::vector<std::vector<std::size_t>> deps(list.size());
    std::vector<std::string> ids;
    for (std::size_t i = 0; i < out.requests.size(); ++i) {
        ids.push_back(out.requests[i].id);
        for (const auto& d : depends[i]) {
            auto it = index.find(d);
            if (it == index.end())
                return fail(envelope_error::bad_request,
                            "sub-request \"" + out.requests[i].id + "\" depends on unknown id \"" + d + "\"");
            if (std::find(deps[i].begin(), deps[i].end(), it->second) == deps[i].end()) deps[i].push_back(it->second);
        }
    }
    if (auto cycle = find_cycle(deps, ids)) return fail(envelope_error::bad_request, *cycle);
    for (std::size_t i = 0; i < deps.size(); ++i) out.requests[i].depends_on = std::move(deps[i]);
    return out;
}

std::optional<std::string> check_sub_url(std::string_view url) {
    if (url.empty()) return "url is empty";
    for (char c : url)
        if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f || c == '\\')
            return "url holds a space, a control character or a backslash";
    if (url.find("://") != std::string_view::npos && url.front() != '/')
        return "absolute URLs are not allowed: a sub-request names a path on this gateway";
    if (url.front() != '/') return "url must be a path starting with \"/\"";
    if (url.size() > 1 && url[1] == '/') return "url must not name another host (\"//\")";
    if (url.find('#') != std::string_view::npos) return "url must not hold a fragment";
    if (routes::has_dot_segment(routes::split_target(url).first)) return "url must not hold \".\" or \"..\" segments";
    return std::nullopt;
}

bool names_header(const sub_request& r, std::string_view name) {
    for (const auto& [k, v] : r.headers)
        if (iequals(k, name)) return true;
    return false;
}

std::pair<std::string, bool> encode_body(const json& body) {
    if (body.is_string()) return {body.get<std::string>(), false};
    return {body.dump(-1, ' ', false, json::error_handler_t::replace), true};
}

json response_entry(const std::string& id, int status, const std::vector<std::pair<std::string, std::string>>& headers,
                    std::string_view content_type, const std::string& body, std::size_t max_json_depth) {
    json entry{{"id", id}, {"status", status}};
    json h = json::object();
    // Field names are case-insensitive (RFC 9110 5.1): lines of one name become one member, named
    // as the first line spells it, values joined as a list (5.3).
    for (const auto& [k, v] : headers) {
        auto same = h.begin();
        while (same != h.end() && !iequals(same.key(), k)) ++same;
        if (same != h.end()) *same = same->get<std::string>() + ", " + v;
        else h[k] = v;
    }
    entry["headers"] = std::move(h);
    if (body.empty()) return entry;
    const bool says_json = content_type.find("json") != std::string_view::npos;
    if (says_json || content_type.empty()) {
        auto parsed = routes::parse_json(body, max_json_depth);
        if (parsed.status == routes::json_status::too_deep)
            return error_entry(id, 502, "upstream_bad_response", "upstream answer is " + routes::json_depth_message(max_json_depth));
        if (parsed.ok()) {
            entry["body"] = std::move(parsed.value);
            return entry;
        }
    }
    entry["body"] = body;
    return entry;
}

json error_entry(const std::string& id, int status, std::string_view code, const std::string& message) {
    return json{{"id", id},
                {"status", status},
                {"headers", {{"Content-Type", "application/json"}}},
                {"body", {{"error", code}, {"message", message}}}};
}

}  // namespace batchgate::fanout
