// Fuzz target: splitting an upstream batch answer back to its callers (split_batch_response,
// coalescer/core/codec.hpp) for every coalesce route of the examples and
// tests/testdata/write_routes.yaml, as coalescer/batcher.cpp calls it.
// Input: route byte, requested keys (one per line), 0x1F, the upstream's answer body.
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "coalescer/core/codec.hpp"
#include "fuzz_common.hpp"

using namespace batchgate;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto& routes_list = fuzz::examples().coalesce;
    fuzz::input in(data, size);
    const config::route_settings& route = *routes_list[in.byte() % routes_list.size()];

    // Keys as the batcher has them: non-empty, repeated only under same_key: in_batch.
    std::vector<std::string> keys;
    std::string_view list = in.field();
    while (!list.empty() && keys.size() < 200) {
        auto nl = list.find('\n');
        std::string k(list.substr(0, nl));
        list = nl == std::string_view::npos ? std::string_view{} : list.substr(nl + 1);
        // Repeats stay: a key asked twice is two operations on it (same_key: in_batch).
        if (!k.empty()) keys.push_back(std::move(k));
    }
    const std::string_view body = in.rest();

    auto out = coalescer::split_batch_response(route.coalesce, route.name, body, keys, 64);  // limits.max_json_depth default
    if (!out.error.empty()) {
        fuzz::check(out.items.empty(), "a failed split with items");
        return 0;
    }
    // Every caller gets exactly one answer: a final status and a JSON body (or none for 204).
    fuzz::check(out.items.size() == keys.size(), "split answers " + std::to_string(out.items.size()) + " of " +
                                                     std::to_string(keys.size()) + " keys");
    for (std::size_t i = 0; i < keys.size(); ++i) {
        const auto& o = out.items[i];
        fuzz::check(o.status >= 200 && o.status <= 599, "item status " + std::to_string(o.status));
        const auto body = coalescer::render_answer(o, nlohmann::json::object(), keys[i]);
        if (o.status == 204) fuzz::check(o.body.empty(), "a 204 item with a body");
        else if (body.error.empty()) fuzz::check(nlohmann::json::accept(body.body), "item body is not JSON: " + body.body);
    }
    return 0;
}
