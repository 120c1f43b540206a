// Fuzz target: HTTP-dates (text/http_date.hpp), as an upstream's Retry-After carries them.
// A date it accepts reads back from its own IMF-fixdate; an IMF-fixdate it accepts (but for a
// leap second) is that text again, day name aside (the day name is not checked).
// Input: byte 0 picks the current year (1950 + byte), the rest is the field value.
#include <chrono>
#include <cstdint>
#include <string>

#include "fuzz_common.hpp"
#include "text/http_date.hpp"

using namespace batchgate;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace std::chrono;
    fuzz::input in(data, size);
    const sys_seconds now = sys_days(year(1950 + in.byte()) / January / 1);
    const std::string_view text = in.rest();
    const auto t = routes::parse_http_date(text, now);
    if (!t) return 0;
    const std::string again = routes::format_http_date(*t);
    fuzz::check(routes::parse_http_date(again, now) == t, "\"" + again + "\" does not read back");
    const bool imf = text.size() == 29 && text.substr(3, 2) == ", " && text.substr(26) == "GMT";
    if (imf && text.substr(23, 2) != "60")
        fuzz::check(again.substr(3) == text.substr(3), "\"" + std::string(text) + "\" formats as \"" + again + "\"");
    return 0;
}
