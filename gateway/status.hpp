// The admin listener's status view: GET /status (and /) is one HTML page, compiled in, that
// polls GET /status.json every two seconds. The JSON is read from the same metric families
// /metrics serializes (plus the running config's route modes), so the two never disagree:
// counters are cumulative, as in /metrics, and the page (or a script) turns two snapshots into
// rates.
#pragma once

#include <string>
#include <string_view>

#include "gateway/shared_state.hpp"

namespace batchgate::gateway {

// Sets the upstream pool gauges (batchgate_upstream_connections) from rt's pools; called before
// /metrics and /status.json are served.
void refresh_pool_gauges(metrics::registry& metrics, const runtime& rt);

// The snapshot /status.json serves (see README, Status page, for its fields).
std::string status_json(const shared_state& state, const runtime& rt);

// The page itself: HTML with its CSS and JS inline, no outside assets.
std::string_view status_page();

}  // namespace batchgate::gateway
