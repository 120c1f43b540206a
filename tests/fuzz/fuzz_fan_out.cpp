// Fuzz target: fan_out (fanout/core/fan_out.hpp) and its templates (text/template.hpp).
// Byte 0 even: a fan_out route (the examples' and a template-heavy one below) serves a client
// body: parse_fan_out, build_item_request per item, render_item per upstream answer,
// render_envelope. Fields: client header lines, client body, then one upstream answer per item
// ("200 {json}" or "404 text"). Byte 0 odd: template text rendered and checked directly against
// values from a JSON document. Fields: template, JSON values.
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/fan_out_rules.hpp"
#include "config/loader.hpp"
#include "fanout/core/fan_out.hpp"
#include "fuzz_common.hpp"
#include "text/json_pointer.hpp"
#include "text/template.hpp"

using namespace batchgate;
using nlohmann::json;

namespace {

// Uses every kind of placeholder and conversion the loader allows in a fan_out route.
constexpr std::string_view template_route = R"(
upstreams:
  api: {url: "http://127.0.0.1:9000"}
routes:
  - name: posts-fanout
    match: {method: POST, path: /posts/batch}
    upstream: api
    mode: fan_out
    fan_out:
      items: /items
      min_items: 0
      max_items: 50
      require: {"/version": 2, "/opts": {mode: [1, true, null]}}
      request:
        method: PUT
        path: "/posts/{item./id}/v{body./version:int}/{item./slug}"
        query: {tag: "{item./tag}", n: "{index}", all: "{body./opts:json}", who: "{header.x-user}"}
        headers: {x-item-id: "{item./id}", x-user: "{header.x-user}", x-kind: "k-{item./kind:string}"}
        body: {id: "{item./id:int}", data: "{item./data}", flag: "{item./flag:bool}", n: "{item./n:number}", s: "{item:string}", raw: "{item./raw:json}"}
      response:
        success: {i: "{index}", r: "{response./data}", all: "{response}", t: "x{status}y", id: "{item./id}"}
        error: {status: "{status:int}", item: "{item}", why: "{response./error:string}"}
        envelope: {results: "{results}", ok: "{count.succeeded:int}", total: "{count.total:string}", when: "{now}", who: "{header.x-user}", echo: "{body./echo}"}
)";

const std::vector<const config::route_settings*>& fan_out_routes() {
    static const auto routes = [] {
        static fuzz::example_set extra;
        fuzz::add_config(extra, "template_route", config::load_string(template_route, "template_route"));
        auto list = fuzz::examples().fan_out;
        list.insert(list.end(), extra.fan_out.begin(), extra.fan_out.end());
        return list;
    }();
    return routes;
}

void serve(const config::route_settings& route, fuzz::input& in) {
    const auto& settings = route.fan_out;
    const fuzz::header_map headers = fuzz::parse_headers(in.field());
    const fanout::header_lookup header = [&](std::string_view name) { return fuzz::joined(headers, name); };
    auto call = fanout::parse_fan_out(settings, in.field());
    if (!call.error.empty()) return;
    fuzz::check(call.items.size() >= settings.min_items && call.items.size() <= settings.max_items,
                "item count outside min_items..max_items");

    std::vector<json> entries;
    std::size_t succeeded = 0;
    for (std::size_t i = 0; i < call.items.size(); ++i) {
        auto req = fanout::build_item_request(settings, call, header, i);
        if (req.error.empty()) {
            fuzz::check(!req.target.empty() && req.target.front() == '/' && fuzz::wire_safe(req.target) &&
                            req.target.find(' ') == std::string::npos,
                        "item call target cannot go on a request line: " + req.target);
            for (const auto& [name, value] : req.headers)
                fuzz::check(fuzz::wire_safe(value), "item call header " + name + " holds CR, LF or NUL");
        }
        // This item's upstream answer: "STATUS BODY".
        std::string_view answer = in.field();
        fanout::item_result result;
        result.status = 200;
        if (answer.size() >= 3) {
            result.status = (answer[0] - '0') * 100 + (answer[1] - '0') * 10 + (answer[2] - '0');
            answer.remove_prefix(answer.size() > 3 ? 4 : 3);
        }
        if (!req.error.empty()) result.status = 400;
        result.response = json::parse(answer, nullptr, false);
        if (result.response.is_discarded()) result.response = json(std::string(answer));
        if (result.ok()) ++succeeded;
        entries.push_back(fanout::render_item(settings, call, header, i, result));
    }
    auto body = fanout::render_envelope(settings, call, header, std::move(entries), succeeded,
                                        std::chrono::system_clock::time_point{std::chrono::seconds(1'790'000'000)});
    fuzz::check(json::accept(body), "envelope is not JSON");
}

void templates(fuzz::input& in) {
    const std::string_view tmpl = in.field();
    const json values = json::parse(in.rest(), nullptr, false);
    // "{name}" is values[name]; "{p./a/0}" a pointer into values.
    const fanout::resolver resolve = [&](std::string_view name) -> std::optional<json> {
        if (values.is_discarded()) return std::nullopt;
        if (name.starts_with("p.")) {
            auto p = routes::json_pointer::parse(name.substr(2));
            const json* v = p ? p->find(values) : nullptr;
            return v ? std::optional<json>(*v) : std::nullopt;
        }
        if (values.is_object())
            if (auto it = values.find(std::string(name)); it != values.end()) return *it;
        return std::nullopt;
    };
    for (bool encode : {false, true}) {
        auto r = fanout::render_text(tmpl, resolve, encode);
        if (encode && r.text && tmpl.find_first_of(" \r\n") == std::string_view::npos)
            fuzz::check(r.text->find_first_of(" \r\n") == std::string::npos, "url-encoded value left a space or line break");
    }
    for (const auto* rules :
         {&config::fan_out_request_rules(), &config::fan_out_item_rules(), &config::fan_out_envelope_rules()})
        (void)fanout::check_text(tmpl, *rules);
    const json as_json = json::parse(tmpl, nullptr, false);
    if (!as_json.is_discarded()) {
        (void)fanout::check_json(as_json, config::fan_out_request_rules());
        auto r = fanout::render_json(as_json, resolve);
        if (r.value) (void)r.value->dump(-1, ' ', false, json::error_handler_t::replace);
    }
    if (!values.is_discarded()) (void)fanout::text_of(values);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto& routes_list = fan_out_routes();
    fuzz::input in(data, size);
    const std::uint8_t choice = in.byte();
    if (choice & 1) templates(in);
    else serve(*routes_list[(choice >> 1) % routes_list.size()], in);
    return 0;
}
