#include "text/http_date.hpp"

#include <array>

namespace batchgate::routes {

namespace {

using namespace std::chrono;

constexpr std::array<std::string_view, 7> short_days = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
constexpr std::array<std::string_view, 7> long_days = {"Sunday",   "Monday", "Tuesday", "Wednesday",
                                                       "Thursday", "Friday", "Saturday"};
constexpr std::array<std::string_view, 12> months = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

// Reads text from its front, refusing anything the grammar does not spell exactly.
class reader {
public:
    explicit reader(std::string_view text) : rest_(text) {}

    bool literal(std::string_view s) {
        if (rest_.substr(0, s.size()) != s) return false;
        rest_.remove_prefix(s.size());
        return true;
    }
    // One of names; its index, or -1.
    template <std::size_t N>
    int name(const std::array<std::string_view, N>& names) {
        for (std::size_t i = 0; i < N; ++i)
            if (literal(names[i])) return static_cast<int>(i);
        return -1;
    }
    // Exactly n digits.
    std::optional<int> digits(std::size_t n) {
        if (rest_.size() < n) return std::nullopt;
        int v = 0;
        for (std::size_t i = 0; i < n; ++i) {
            const char c = rest_[i];
            if (c < '0' || c > '9') return std::nullopt;
            v = v * 10 + (c - '0');
        }
        rest_.remove_prefix(n);
        return v;
    }
    bool done() const { return rest_.empty(); }

private:
    std::string_view rest_;
};

struct parts {
    int year = 0, month = 0, day = 0;  // month 1-12
    int hour = 0, minute = 0, second = 0;
};

// time-of-day = hour ":" minute ":" second
bool time_of_day(reader& r, parts& p) {
    auto h = r.digits(2);
    if (!h || !r.literal(":")) return false;
    auto m = r.digits(2);
    if (!m || !r.literal(":")) return false;
    auto s = r.digits(2);
    if (!s) return false;
    p.hour = *h, p.minute = *m, p.second = *s;
    return true;
}

// "Sun, 06 Nov 1994 08:49:37 GMT"
bool imf_fixdate(std::string_view text, parts& p) {
    reader r(text);
    if (r.name(short_days) < 0 || !r.literal(", ")) return false;
    auto d = r.digits(2);
    if (!d || !r.literal(" ")) return false;
    const int m = r.name(months);
    if (m < 0 || !r.literal(" ")) return false;
    auto y = r.digits(4);
    if (!y || !r.literal(" ") || !time_of_day(r, p) || !r.literal(" GMT") || !r.done()) return false;
    p.year = *y, p.month = m + 1, p.day = *d;
    return true;
}

// "Sunday, 06-Nov-94 08:49:37 GMT"
bool rfc850_date(std::string_view text, int now_year, parts& p) {
    reader r(text);
    if (r.name(long_days) < 0 || !r.literal(", ")) return false;
    auto d = r.digits(2);
    if (!d || !r.literal("-")) return false;
    const int m = r.name(months);
    if (m < 0 || !r.literal("-")) return false;
    auto yy = r.digits(2);
    if (!yy || !r.literal(" ") || !time_of_day(r, p) || !r.literal(" GMT") || !r.done()) return false;
    // Within 50 years of now either way; "more than 50 years in the future" is the past century's.
    int year = now_year / 100 * 100 + *yy;
    if (year > now_year + 50) year -= 100;
    else if (year <= now_year - 50) year += 100;
    p.year = year, p.month = m + 1, p.day = *d;
    return true;
}

// "Sun Nov  6 08:49:37 1994" (a day below 10 is a space and one digit)
bool asctime_date(std::string_view text, parts& p) {
    reader r(text);
    if (r.name(short_days) < 0 || !r.literal(" ")) return false;
    const int m = r.name(months);
    if (m < 0 || !r.literal(" ")) return false;
    std::optional<int> d;
    if (r.literal(" ")) {
        d = r.digits(1);
    } else {
        d = r.digits(2);
        if (d && *d < 10) return false;  // "06" is not how asctime writes 6
    }
    if (!d || !r.literal(" ") || !time_of_day(r, p) || !r.literal(" ")) return false;
    auto y = r.digits(4);
    if (!y || !r.done()) return false;
    p.year = *y, p.month = m + 1, p.day = *d;
    return true;
}

}  // namespace

std::optional<sys_seconds> parse_http_date(std::string_view text, sys_seconds now) {
    parts p;
    const int now_year = static_cast<int>(year_month_day(floor<days>(now)).year());
    if (!imf_fixdate(text, p) && !rfc850_date(text, now_year, p) && !asctime_date(text, p)) return std::nullopt;
    const year_month_day date{year(p.year), month(static_cast<unsigned>(p.month)), day(static_cast<unsigned>(p.day))};
    if (!date.ok() || p.hour > 23 || p.minute > 59 || p.second > 60) return std::nullopt;
    return sys_days(date) + hours(p.hour) + minutes(p.minute) + seconds(p.second == 60 ? 59 : p.second);
}

std::string format_http_date(sys_seconds t) {
    const auto day_start = floor<days>(t);
    const year_month_day date(day_start);
    const hh_mm_ss<seconds> tod(t - day_start);
    auto two = [](std::string& out, unsigned v) {
        out += static_cast<char>('0' + v / 10 % 10);
        out += static_cast<char>('0' + v % 10);
    };
    std::string out;
    out.reserve(29);
    out += short_days[weekday(day_start).c_encoding()];
    out += ", ";
    two(out, static_cast<unsigned>(date.day()));
    out += ' ';
    out += months[static_cast<unsigned>(date.month()) - 1];
    out += ' ';
    const auto y = static_cast<unsigned>(static_cast<int>(date.year()));
    two(out, y / 100);
    two(out, y);
    out += ' ';
    two(out, static_cast<unsigned>(tod.hours().count()));
    out += ':';
    two(out, static_cast<unsigned>(tod.minutes().count()));
    out += ':';
    two(out, static_cast<unsigned>(tod.seconds().count()));
    out += " GMT";
    return out;
}

}  // namespace batchgate::routes
