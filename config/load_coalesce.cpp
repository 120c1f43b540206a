// A route's coalesce section: key, partition, request (with its maps and templates), response
// (result lists), retry. The route's match entries arrive as a route_shape.
#include <algorithm>
#include <map>
#include <string_view>
#include <utility>

#include "config/load_context.hpp"
#include "config/load_sections.hpp"
#include "text/template.hpp"

namespace batchgate::config::detail {

namespace {

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

// when: a map of JSON pointer -> JSON value (status_rules[].when, failed_items.when).
std::vector<std::pair<std::string, nlohmann::json>> read_when(context& ctx, const field& f) {
    std::vector<std::pair<std::string, nlohmann::json>> out;
    if (!f.value.IsMap() || f.value.size() == 0) {
        ctx.add(f.mark(), f.path,
                std::string("expected a non-empty map of JSON pointer -> value, like {/status: error}, got ") +
                    (f.value.IsMap() ? "an empty map" : kind(f.value)));
        return out;
    }
    for (auto it = f.value.begin(); it != f.value.end(); ++it) {
        if (!it->first.IsScalar()) {
            ctx.add(it->first.Mark(), f.path, "keys must be JSON pointers");
            continue;
        }
        field entry{it->first, it->second, child(f.path, it->first.Scalar())};
        auto ptr = read_pointer(ctx, field{it->first, it->first, entry.path}, true);
        if (!ptr) continue;
        if (std::any_of(out.begin(), out.end(), [&](const auto& w) { return w.first == *ptr; })) {
            ctx.add(it->first.Mark(), entry.path, "duplicate key");
            continue;
        }
        std::vector<placeholder_use> none;
        out.emplace_back(*ptr, yaml_to_json(ctx, it->second, entry.path, none, it->first.Mark(), false));
    }
    return out;
}

// status_rules: [{when: {POINTER: value, ...}, status: N}, ...]
void read_status_rules(context& ctx, const field& f, std::vector<status_rule>& out) {
    if (!f.value.IsSequence() || f.value.size() == 0) {
        ctx.add(f.mark(), f.path,
                std::string("expected a non-empty list of {when: {POINTER: value}, status: N}, got ") +
                    (f.value.IsSequence() ? "an empty list" : kind(f.value)));
        return;
    }
    std::size_t i = 0;
    for (const auto& node : f.value) {
        const std::string path = index(f.path, i++);
        map_reader r(ctx, node, path, {"when", "status"});
        if (!r.ok()) continue;
        status_rule rule;
        if (auto* x = r.required("when")) rule.when = read_when(ctx, *x);
        if (auto* x = r.required("status"))
            if (auto v = read_int(ctx, *x, 200, 599)) rule.status = static_cast<int>(*v);
        out.push_back(std::move(rule));
    }
}

// The placeholders a coalesce response template may use.
const fanout::placeholder_rules& answer_template_rules() {
    static const fanout::placeholder_rules rules{{"item", "key", "method", "status", "body"},
                                                 {"item.", "body.", "path.", "query.", "header."}};
    return rules;
}

// A ":TYPE" suffix the answer template cannot apply (the codec splits at the last ':', so a
// pointer holding ':' cannot be used either); nullopt when every placeholder is fine.
std::optional<std::string> bad_type_suffix(const nlohmann::json& tmpl) {
    if (tmpl.is_structured()) {
        for (const auto& e : tmpl)
            if (auto err = bad_type_suffix(e)) return err;
        return std::nullopt;
    }
    if (!tmpl.is_string()) return std::nullopt;
    const std::string& s = tmpl.get_ref<const std::string&>();
    for (std::size_t open = s.find('{'); open != std::string::npos; open = s.find('{', open + 1)) {
        const std::size_t close = s.find('}', open);
        if (close == std::string::npos) break;
        const std::string_view inner = std::string_view(s).substr(open + 1, close - open - 1);
        const auto colon = inner.rfind(':');
        if (colon == std::string_view::npos) continue;
        const auto type = inner.substr(colon + 1);
        if (type != "int" && type != "number" && type != "bool" && type != "string" && type != "json")
            return "unknown type suffix \":" + std::string(type) + "\" in {" + std::string(inner) +
                   "}: use :int, :number, :bool, :string or :json (a JSON pointer here cannot hold \":\")";
    }
    return std::nullopt;
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
    if (auto* x = m.get("status_rules")) read_status_rules(ctx, *x, out.status_rules);
    if (auto* x = m.get("template")) {
        std::vector<placeholder_use> none;
        out.body_template = yaml_to_json(ctx, x->value, x->path, none, x->key.Mark(), false);
        if (auto err = fanout::check_json(out.body_template, answer_template_rules()))
            ctx.add(x->mark(), x->path, *err);
        else if (auto bad = bad_type_suffix(out.body_template))
            ctx.add(x->mark(), x->path, *bad);
        if (out.body_template.is_null()) ctx.add(x->mark(), x->path, "expected a JSON template, got null");
        if (body || m.get("body_value"))
            ctx.add(x->key.Mark(), x->path, "give one of body, body_value or template");
    }
}

void load_response(context& ctx, const field& f, batch_response_settings& out, const route_shape& shape) {
    static constexpr std::string_view single_keys[] = {
        "items", "key", "by_position", "status_code", "status", "status_map", "body", "body_value", "error",
        "status_rules", "template"};
    map_reader m(ctx, f.value, f.path,
                 {"items", "key", "by_position", "status_code", "status", "status_map", "body", "body_value", "error",
                  "status_rules", "template", "lists", "missing_status", "success_status"});
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
                               "body_value", "error", "status_rules", "template"});
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
    } else if (initial && out.initial_backoff > out.max_backoff && !out.statuses.empty() && out.max_attempts > 1) {
        ctx.add(initial->mark(), initial->path,
                "is more than max_backoff (" + std::to_string(out.max_backoff.count()) +
                    "ms, its default), which caps every backoff: set max_backoff too");
    }
}

void load_failed_items(context& ctx, const field& f, failed_items_settings& out) {
    map_reader m(ctx, f.value, f.path, {"items", "key", "when"});
    if (!m.ok()) return;
    if (auto* x = m.get("items"))
        if (auto v = read_pointer(ctx, *x, true)) out.items = *v;
    if (auto* x = m.required("key")) read_key_pointers(ctx, *x, out.key);
    if (auto* x = m.get("when")) out.when = read_when(ctx, *x);
}

}  // namespace

void load_coalesce(context& ctx, const field& f, coalesce_settings& out, const route_shape& shape) {
    map_reader m(ctx, f.value, f.path,
                 {"key", "on_missing_key", "partition", "same_key", "ordered", "max_batch_items", "max_batch_bytes",
                  "max_wait", "flush", "min_wait", "max_concurrent_batches", "max_waiting", "request", "response",
                  "on_batch_error",
                  "failed_items", "retry", "shadow"});
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
                                                 {"merge_patch", same_key_policy::merge_patch},
                                                 {"in_batch", same_key_policy::in_batch}}))
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
    if (auto* x = m.get("flush"))
        if (auto v = read_enum<flush_policy>(ctx, *x, "flush",
                                             {{"window", flush_policy::window}, {"adaptive", flush_policy::adaptive}}))
            out.flush = *v;
    if (auto* x = m.get("min_wait")) {
        if (auto v = read_duration(ctx, *x, true)) {
            out.min_wait = *v;
            if (out.flush != flush_policy::adaptive)
                ctx.add(x->key.Mark(), x->path, "min_wait is only used with flush: adaptive");
            else if (out.min_wait > out.max_wait)
                ctx.add(x->mark(), x->path,
                        "must be at most max_wait (" + std::to_string(out.max_wait.count()) + "ms)");
        }
    }
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
    const field* failed_items = m.get("failed_items");
    if (failed_items) {
        load_failed_items(ctx, *failed_items, out.failed_items);
        if (out.on_batch_error != batch_error_policy::isolate)
            ctx.add(failed_items->key.Mark(), failed_items->path,
                    "failed_items is only used with on_batch_error: isolate (it names the items to take out of a refused batch)");
    }
    if (auto* x = m.get("retry")) load_retry(ctx, *x, out.retry);
    if (auto* x = m.get("shadow"))
        if (auto v = read_bool(ctx, *x)) out.shadow = *v;
    // Query encodings put every key in the request line, which most servers cap at 8 KiB:
    // bound it unless the route sets its own limit.
    if (request && out.max_batch_bytes == 0 && out.request.encoding != batch_encoding::json_body)
        out.max_batch_bytes = default_query_batch_bytes;
    if (same_key && out.same_key == same_key_policy::merge_patch && request &&
        out.request.encoding != batch_encoding::json_body) {
        ctx.add(same_key->mark(), same_key->path,
                "merge_patch needs encoding: json_body (query encodings send only keys, there is no payload to merge)");
    }
    // in_batch: each caller's answer must be found unambiguously among several for one key.
    if (same_key && out.same_key == same_key_policy::in_batch) {
        if (request && out.request.encoding != batch_encoding::json_body)
            ctx.add(same_key->mark(), same_key->path,
                    "in_batch needs encoding: json_body (a query list carries keys, not several operations on one key)");
        const auto& lists = out.response.lists;
        if (lists.size() > 1)
            ctx.add(same_key->mark(), same_key->path,
                    "in_batch needs one result list: with " + std::to_string(lists.size()) +
                        ", the n-th answer for a key cannot be told from the order of the lists (or use one list with by_position: true)");
    }
}

}  // namespace batchgate::config::detail
