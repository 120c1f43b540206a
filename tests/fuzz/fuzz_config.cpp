// Fuzz target: YAML text -> config loader and validator (config/loader.hpp), as --check-config
// and SIGHUP reload run it. Any input is either a config or a config_error; a config the loader
// accepts must build a route table and have usable response pointers on every coalesce route.
#include <cstdint>
#include <string_view>

#include "coalescer/core/codec.hpp"
#include "config/loader.hpp"
#include "fuzz_common.hpp"
#include "routes/route_table.hpp"

using namespace batchgate;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    (void)config::parse_duration(text);
    (void)config::parse_size(text);
    config::gateway_config cfg;
    try {
        cfg = config::load_string(text, "fuzz.yaml");
    } catch (const config::config_error& e) {
        fuzz::check(!e.errors().empty(), "config_error without an error line");
        return 0;
    }
    routes::route_table table(cfg);  // throws (a finding) on a template the loader let through
    for (const auto& r : cfg.routes) {
        if (r.mode != config::route_mode::coalesce) continue;
        auto split = coalescer::split_batch_response(r.coalesce, r.name, "[]", {});
        fuzz::check(!split.error.starts_with("route "),
                    "loader accepted route '" + r.name + "' that cannot split: " + split.error);
    }
    return 0;
}
