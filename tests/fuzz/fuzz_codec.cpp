// Fuzz target: what the dispatcher does with one caller of a coalesce route
// (gateway/dispatcher.cpp coalesce()): extract_key, build_item, make_partition, item_cost, then
// build_batch_request for the batch it would join (coalescer/core/codec.hpp), for every coalesce
// route of the examples and tests/testdata/write_routes.yaml.
// Input: route byte, then fields method, target, header lines, body, path params ("a=1&b=2",
// used when the target matches none of the route's path templates), separated by 0x1F.
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

#include "coalescer/core/codec.hpp"
#include "fuzz_common.hpp"
#include "text/url.hpp"

using namespace batchgate;

namespace {

// The path parameters the route table would give this path for this route, if it matches.
std::optional<routes::param_list> params_for(const config::route_settings& route, std::string_view path) {
    for (const auto& m : route.matches) {
        if (m.path.empty()) continue;
        routes::path_template t(m.path);  // valid: the loader checked it
        routes::param_list params;
        if (t.match(path, params)) return params;
    }
    return std::nullopt;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto& routes_list = fuzz::examples().coalesce;
    fuzz::input in(data, size);
    const config::route_settings& route = *routes_list[in.byte() % routes_list.size()];
    const auto& settings = route.coalesce;

    const std::string method(in.field());
    const std::string target(in.field());
    const fuzz::header_map headers = fuzz::parse_headers(in.field());
    const std::string body(in.field());
    const std::string_view fallback_params = in.field();

    auto [path, query] = routes::split_target(target);
    coalescer::caller_request caller;
    caller.method = method;
    caller.path = path;
    caller.query = query;
    auto matched = params_for(route, path);
    caller.path_params = matched ? std::move(*matched) : routes::parse_query(fallback_params);
    std::deque<std::string> joined;  // lives while caller is used, as in the dispatcher
    caller.header = [&](std::string_view name) -> std::optional<std::string_view> {
        auto v = fuzz::joined(headers, name);
        if (!v) return std::nullopt;
        return std::string_view(joined.emplace_back(std::move(*v)));
    };
    caller.body = body;

    std::string key;
    if (settings.key.generate == config::key_generation::always) {
        key = coalescer::generate_correlation_id();
    } else {
        auto k = coalescer::extract_key(settings, caller);
        if (k.key) {
            fuzz::check(!k.key->empty(), "an empty item key was accepted");
            key = std::move(*k.key);
        } else if (settings.key.generate == config::key_generation::when_missing) {
            key = coalescer::generate_correlation_id();
        } else {
            fuzz::check(!k.error.empty(), "no key and no error");
            return 0;
        }
    }
    auto item = coalescer::build_item(settings, caller, key);
    if (!item.item) {
        fuzz::check(!item.error.empty(), "no item and no error");
        return 0;
    }
    auto part = coalescer::make_partition(route.name, settings, caller);
    auto again = coalescer::make_partition(route.name, settings, caller);
    fuzz::check(part.key == again.key, "make_partition is not deterministic");
    const bool json_body = settings.request.encoding == config::batch_encoding::json_body;
    fuzz::check((json_body ? coalescer::item_cost(*item.item) : coalescer::item_cost(settings, key)) > 0,
                "an item that costs nothing");
    (void)coalescer::apply_success_status(settings, method, 200);

    // The batch this caller would join: itself and one more item.
    const std::vector<std::string> keys{key, key + "-2"};
    const std::vector<nlohmann::json> items{*item.item, *item.item};
    auto out = coalescer::build_batch_request(settings, part.values, keys, items);
    fuzz::check(!out.target.empty() && fuzz::wire_safe(out.target) && out.target.find(' ') == std::string::npos,
                "batch call target cannot go on a request line: " + out.target);
    for (const auto& [name, value] : out.headers)
        fuzz::check(fuzz::wire_safe(value), "batch call header " + name + " holds CR, LF or NUL");
    if (json_body)
        fuzz::check(nlohmann::json::accept(out.body), "batch call body is not JSON");
    return 0;
}
