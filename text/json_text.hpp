// JSON from outside (client bodies, upstream answers, values inside them) parsed with a bound
// on nesting. nlohmann's parser does not recurse, but copying, dump() and operator== do: a
// 120 KB body nested 60,000 deep overflows the stack of whichever thread touches it next.
// Every parse of outside JSON goes through here.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace batchgate::routes {

// The most limits.max_json_depth may be (its default, 64, is in config/config.hpp), and the
// bound of every parse that has no setting at hand. At this depth, recursive copies and dumps
// of a document (and of a batch call that embeds one) stay far inside a worker thread's stack.
inline constexpr std::size_t max_json_depth_cap = 512;

// True when text nests arrays and objects more than max_depth deep ("[]" is depth 1, a scalar
// 0). Exact for valid JSON; for invalid JSON the answer does not matter, the parse refuses it.
bool json_too_deep(std::string_view text, std::size_t max_depth);

// out_of_range: valid JSON but for a number beyond a double's range (±1.8e308), which nlohmann
// does not read (RFC 8259 section 9 lets a parser set such a limit).
enum class json_status { ok, invalid, too_deep, out_of_range };

struct parsed_json {
    nlohmann::json value;  // discarded unless status is ok
    json_status status = json_status::invalid;
    bool ok() const { return status == json_status::ok; }
};

// Parses without exceptions; nothing nested deeper than max_depth is ever built.
parsed_json parse_json(std::string_view text, std::size_t max_depth = max_json_depth_cap);

// The status parse_json(text, max_depth) gives, without building the document: the same
// checks (nesting, NUL, RFC 8259's grammar, UTF-8 and escapes in strings, a number beyond a
// double), in one scan that builds nothing but its stack of open brackets (and, when asked, the
// member names of the open objects). For a text then read only through the functions
// below (an upstream's batch answer: a DOM of it cost more than the rest of a caller's answer).
// tests/fuzz/fuzz_json_text.cpp holds the two to the same answer on every input. Assumes the
// C locale, as nlohmann does for numbers (the gateway never sets another). repeated_names,
// when given, is set to whether an object of a valid text names a member twice (unescaped, as
// the parse compares them; json_repeats_a_name of each value then finds which).
json_status check_json(std::string_view text, std::size_t max_depth = max_json_depth_cap,
                       bool* repeated_names = nullptr);

// The bytes of the parts of a JSON text nlohmann accepted (parse_json), so that a value can be
// handed on as the upstream wrote it instead of re-serialized: numbers keep their digits (an
// integer past 64 bits does not turn into a double), keys their order. Each takes valid JSON;
// given anything else it returns nothing rather than read past the end.

// The value that is the whole text, without the whitespace (and UTF-8 byte order mark) around it.
std::optional<std::string_view> json_value_text(std::string_view text);

// The same for a text check_json or parse_json found to be one whole valid value: its BOM and
// surrounding whitespace trimmed, without scanning the value again for its end.
std::string_view checked_value_text(std::string_view checked);

// The members of all the objects in a value's text (its colons outside strings). More than the
// parse's count when a name repeats in an object: the parse keeps only the last of them. (The
// json_text fuzz target's reference for the repeated-name flag.)
std::size_t json_member_count(std::string_view value_text);

// True when an object in a value's text has a member name twice (unescaped, as the parse
// compares them): exactly when json_member_count is more than the parse's count. check_json's
// own flag, for one value; false for a text check_json refuses.
bool json_repeats_a_name(std::string_view value_text);

// A string's text ("\"a\\u0062\"") as its value ("ab"); nullopt when the text is no string.
std::optional<std::string> json_string_value(std::string_view value_text);

// True when a number's text is an integer as written ("-0", "7", 20 digits): no fraction or
// exponent.
bool json_integer_literal(std::string_view value_text);

// The elements of a JSON array's text ("[1, 2]": "1" and "2"); nullopt when it is no array.
std::optional<std::vector<std::string_view>> json_array_elements(std::string_view array_text);

// The value of an object's member `name` (the last one, when the name repeats, as the parse
// keeps it); nullopt when it is no object or has no such member. names_unique: the caller knows
// no object of this text repeats a name (check_json said so), so the first one found is the one.
std::optional<std::string_view> json_member(std::string_view object_text, std::string_view name,
                                            bool names_unique = false);

// The values of every member `name` of an object's text, in order (more than one only when the
// name repeats); empty when it is no object or has no such member.
std::vector<std::string_view> json_members(std::string_view object_text, std::string_view name);

// The index-th element of an array's text; nullopt when it is no array or has no such element.
std::optional<std::string_view> json_element(std::string_view array_text, std::size_t index);

// "nested deeper than limits.max_json_depth (64)", for error messages.
std::string json_depth_message(std::size_t max_depth);

// A JSON number written as a float (6.0, 1e3) as a 64-bit integer: only a whole number inside
// the range converts (casting anything else is undefined: a fuzzer found 3e124). 2^63 is exact
// as a double and just out of range; -2^63 is in it.
inline std::optional<std::int64_t> whole_int64(double d) {
    constexpr double limit = 9223372036854775808.0;
    if (d >= -limit && d < limit && d == std::trunc(d)) return static_cast<std::int64_t>(d);
    return std::nullopt;
}

}  // namespace batchgate::routes
