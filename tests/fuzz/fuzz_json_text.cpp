// Fuzz target: the JSON text readers of text/json_text.hpp held to nlohmann's parse on the same
// bytes. check_json must give parse_json's status for every input (it stands in for the parse
// of an upstream's batch answer); on a valid text it and json_repeats_a_name must say whether
// the parse dropped a repeated name, and a string's or an array element's text must read as the
// parse reads it (json_string_value, json_integer_literal).
// Input: a depth byte (limits.max_json_depth: 1-8, or the cap), then the JSON text.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "fuzz_common.hpp"
#include "text/json_text.hpp"

using namespace batchgate;
using nlohmann::json;

namespace {

// The members of all the objects in a parsed value (a repeated name counts once, as kept).
std::size_t member_count(const json& value) {
    std::size_t n = 0;
    if (value.is_object())
        for (const auto& member : value) n += 1 + member_count(member);
    else if (value.is_array())
        for (const auto& element : value) n += member_count(element);
    return n;
}

const char* name(routes::json_status s) {
    switch (s) {
        case routes::json_status::ok: return "ok";
        case routes::json_status::invalid: return "invalid";
        case routes::json_status::too_deep: return "too_deep";
        case routes::json_status::out_of_range: return "out_of_range";
    }
    return "?";
}

// A value's text read as the parse reads the value.
void check_reads_alike(std::string_view text, const json& value) {
    if (value.is_string()) {
        auto s = routes::json_string_value(text);
        fuzz::check(s && *s == value.get_ref<const std::string&>(), "string value differs from the parse");
    } else {
        fuzz::check(!routes::json_string_value(text), "a non-string read as a string");
    }
    if (routes::json_integer_literal(text)) fuzz::check(value.is_number(), "an integer literal that is no number");
    if (value.is_number_integer())
        fuzz::check(routes::json_integer_literal(text), "an integer the text does not show as one");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    fuzz::input in(data, size);
    const std::uint8_t d = in.byte();
    const std::size_t depth = d >= 8 ? routes::max_json_depth_cap : d + 1;
    const std::string_view text = in.rest();

    const auto parsed = routes::parse_json(text, depth);
    const auto checked = routes::check_json(text, depth);
    fuzz::check(checked == parsed.status, std::string("check_json says ") + name(checked) + ", parse_json " +
                                              name(parsed.status));
    if (!parsed.ok()) return 0;

    const auto value_text = routes::json_value_text(text);
    fuzz::check(value_text.has_value(), "a valid text without its value's text");
    const bool dropped = routes::json_member_count(*value_text) != member_count(parsed.value);
    fuzz::check(routes::json_repeats_a_name(*value_text) == dropped,
                "json_repeats_a_name differs from the parse's member count");
    bool repeated = !dropped;
    routes::check_json(text, depth, &repeated);
    fuzz::check(repeated == dropped, "check_json's repeated names differ from the parse's member count");
    check_reads_alike(*value_text, parsed.value);
    if (parsed.value.is_array()) {
        const auto elements = routes::json_array_elements(*value_text);
        fuzz::check(elements && elements->size() == parsed.value.size(), "array elements differ from the parse");
        for (std::size_t i = 0; i < elements->size(); ++i) check_reads_alike((*elements)[i], parsed.value[i]);
    }
    return 0;
}
