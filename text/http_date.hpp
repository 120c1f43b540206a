// HTTP-date (RFC 9110 section 5.6.7), as an upstream's Retry-After may carry it. Pure.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace batchgate::routes {

// The instant an HTTP-date names, in any of the three forms a recipient must accept:
//   IMF-fixdate  "Sun, 06 Nov 1994 08:49:37 GMT"   (the one senders generate)
//   rfc850-date  "Sunday, 06-Nov-94 08:49:37 GMT"  (a two-digit year more than 50 years ahead
//                                                   of `now` is read as the past century's)
//   asctime      "Sun Nov  6 08:49:37 1994"
// Exactly as the grammar spells them (case-sensitive, single spaces); the date must exist
// (no 31 April), hour 0-23, minute 0-59, second 0-60 (a leap second reads as :59). The day
// name is not checked against the date (RFC 9110 asks recipients to be lenient on content).
// Nothing else is an HTTP-date.
std::optional<std::chrono::sys_seconds> parse_http_date(std::string_view text, std::chrono::sys_seconds now);

// t as an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"), for years 0000-9999.
std::string format_http_date(std::chrono::sys_seconds t);

}  // namespace batchgate::routes
