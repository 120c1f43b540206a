// The placeholders each fan_out template may use (README: Fan-out). The loader checks the
// templates against these; fanout/core/fan_out.cpp renders them with exactly these names.
#pragma once

#include "text/template.hpp"

namespace batchgate::config {

const fanout::placeholder_rules& fan_out_request_rules();   // request.path/query/headers/body
const fanout::placeholder_rules& fan_out_item_rules();      // response.success / response.error
const fanout::placeholder_rules& fan_out_envelope_rules();  // response.envelope

}  // namespace batchgate::config
