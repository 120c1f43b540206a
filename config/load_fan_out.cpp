// A route's fan_out and batch_envelope sections.
#include <string>
#include <utility>
#include <vector>

#include "config/fan_out_rules.hpp"
#include "config/load_context.hpp"
#include "config/load_sections.hpp"
#include "text/template.hpp"

namespace batchgate::config::detail {

// ---------------------------------------------------------------------------------------
// fan_out and batch_envelope (README: Fan-out)

namespace {

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
            if (auto err = fanout::check_text(*v, fan_out_request_rules())) ctx.add(entry.mark(), entry.path, *err);
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
            if (auto err = fanout::check_text(*s, fan_out_request_rules())) ctx.add(x->mark(), x->path, *err);
        }
    }
    if (auto* x = m.get("query")) out.query = read_text_templates(ctx, *x, false);
    if (auto* x = m.get("headers"))
        for (auto& [k, v] : read_text_templates(ctx, *x, true)) out.headers[k] = v;
    if (auto* x = m.get("body")) out.body = read_fanout_template(ctx, *x, fan_out_request_rules());
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

}  // namespace

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
            if (auto* y = r.get("success")) out.response.success = read_fanout_template(ctx, *y, fan_out_item_rules());
            if (auto* y = r.get("error")) out.response.error = read_fanout_template(ctx, *y, fan_out_item_rules());
            if (auto* y = r.get("envelope"))
                out.response.envelope = read_fanout_template(ctx, *y, fan_out_envelope_rules());
        }
    }
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

}  // namespace batchgate::config::detail

namespace batchgate::config {

const fanout::placeholder_rules& fan_out_request_rules() {
    static const fanout::placeholder_rules r{{"item", "index"}, {"item.", "body.", "header."}};
    return r;
}

const fanout::placeholder_rules& fan_out_item_rules() {
    static const fanout::placeholder_rules r{{"item", "index", "response", "status"},
                                             {"item.", "body.", "header.", "response."}};
    return r;
}

const fanout::placeholder_rules& fan_out_envelope_rules() {
    static const fanout::placeholder_rules r{{"results", "count.total", "count.succeeded", "count.failed", "now"},
                                             {"body.", "header."}};
    return r;
}

}  // namespace batchgate::config
