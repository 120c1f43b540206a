// Fuzz target: the generic $batch envelope (fanout/core/batch_envelope.hpp): parsing and
// validation of the whole call, each sub-request's URL check and body encoding, its answer
// entry, and the dependsOn plan run to the end (fanout/core/dependency_plan.hpp).
// Input: max_requests byte, then the client's body.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fanout/core/batch_envelope.hpp"
#include "fanout/core/dependency_plan.hpp"
#include "fuzz_common.hpp"

using namespace batchgate;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    fuzz::input in(data, size);
    const std::size_t max_requests = in.byte() % 100 + 1;  // the loader accepts 1..100
    const std::uint8_t statuses = in.byte();                // which sub-requests "fail", below
    auto env = fanout::parse_envelope(in.rest(), max_requests);
    if (env.error != fanout::envelope_error::none) {
        fuzz::check(env.requests.empty() && !env.message.empty(), "a refused envelope without a message");
        return 0;
    }
    const std::size_t n = env.requests.size();
    fuzz::check(n >= 1 && n <= max_requests, "sub-request count outside 1..max_requests");

    std::vector<std::vector<std::size_t>> deps;
    for (const auto& r : env.requests) {
        fuzz::check(!r.id.empty() && !r.method.empty(), "sub-request without id or method");
        for (const auto& [name, value] : r.headers)
            fuzz::check(fuzz::wire_safe(name) && value.find_first_of("\r\n") == std::string::npos,
                        "sub-request header with a line break");
        for (auto d : r.depends_on) fuzz::check(d < n, "dependsOn index out of range");
        deps.push_back(r.depends_on);
        const bool url_ok = !fanout::check_sub_url(r.url).has_value();
        if (url_ok) fuzz::check(fuzz::wire_safe(r.url) && r.url.front() == '/', "check_sub_url let through " + r.url);
        (void)fanout::names_header(r, "authorization");
        std::string body;
        if (r.body) body = fanout::encode_body(*r.body).first;
        auto entry = fanout::response_entry(r.id, 200, r.headers, "", body, 64);  // limits.max_json_depth default
        (void)entry.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
        (void)fanout::error_entry(r.id, 424, "failed_dependency", r.url);
    }

    // Run the plan as the engine does, one slot at a time: it must end, each request once.
    fanout::dependency_plan plan(deps);
    std::vector<int> seen(n, 0);
    for (std::size_t round = 0; !plan.done(); ++round) {
        fuzz::check(round <= 2 * n + 2, "dependsOn plan does not finish");
        auto step = plan.next(1 + statuses % 3);
        for (auto i : step.skip) ++seen[i];
        for (auto i : step.start) {
            ++seen[i];
            plan.finish(i, (statuses >> (i % 8)) & 1 ? 500 : 200);
        }
        if (step.start.empty() && step.skip.empty())
            fuzz::check(plan.done(), "dependsOn plan stalls with requests left");
    }
    for (std::size_t i = 0; i < n; ++i) fuzz::check(seen[i] == 1, "sub-request started or skipped twice");
    return 0;
}
