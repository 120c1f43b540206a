// Fuzz target: RFC 6901 JSON pointers (text/json_pointer.hpp), compared with nlohmann's own
// json_pointer: both must accept the same texts and find the same value; find_text (and
// find_in_value, json_array_elements) must give that value's own bytes.
// Input: pointer text, 0x1F, JSON document.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "fuzz_common.hpp"
#include "text/json_pointer.hpp"
#include "text/json_text.hpp"

using namespace batchgate;
using nlohmann::json;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    fuzz::input in(data, size);
    const std::string text(in.field());
    const json doc = json::parse(in.rest(), nullptr, false);

    auto ours = routes::json_pointer::parse(text);
    std::optional<json::json_pointer> theirs;
    try {
        theirs.emplace(text);
    } catch (const json::exception&) {
    }
    fuzz::check(ours.has_value() == theirs.has_value(), "pointer \"" + text + "\": parse differs from nlohmann");
    if (!ours) return 0;
    fuzz::check(ours->text() == text, "pointer text not kept");
    fuzz::check(ours->is_root() == text.empty(), "is_root wrong");
    if (doc.is_discarded()) return 0;

    const json* found = ours->find(doc);
    const json* expected = nullptr;
    try {
        expected = &doc.at(*theirs);
    } catch (const json::exception&) {
    }
    fuzz::check(found == expected, "pointer \"" + text + "\": find differs from nlohmann's at()");

    // find_text: the same value, in its own bytes (what a caller of a coalesce route gets).
    // Slices lie inside the text, elements one after another (equal as parsed is not enough:
    // a slice of the wrong one of two siblings 1 and 1.0 would pass that).
    const std::string_view doc_text = in.rest();
    auto inside = [](std::string_view outer, std::string_view part) {
        return part.data() >= outer.data() && part.data() + part.size() <= outer.data() + outer.size();
    };
    const auto found_text = ours->find_text(doc_text);
    fuzz::check(found_text.has_value() == (found != nullptr), "pointer \"" + text + "\": find_text differs from find");
    const auto value_text = routes::json_value_text(doc_text);
    fuzz::check(value_text && ours->find_in_value(*value_text) == found_text,
                "pointer \"" + text + "\": find_in_value differs from find_text");
    if (!found) return 0;
    fuzz::check(inside(doc_text, *found_text), "find_text outside the text");
    fuzz::check(json::parse(*found_text, nullptr, false) == *found,
                "pointer \"" + text + "\": find_text gives " + std::string(*found_text));
    if (found->is_array()) {
        const auto elements = routes::json_array_elements(*found_text);
        fuzz::check(elements && elements->size() == found->size(), "array elements miscounted");
        const char* after = found_text->data();
        for (std::size_t i = 0; i < found->size(); ++i) {
            const std::string_view e = (*elements)[i];
            fuzz::check(inside(*found_text, e) && e.data() >= after, "array elements out of order");
            after = e.data() + e.size();
            fuzz::check(json::parse(e, nullptr, false) == (*found)[i], "array element differs");
        }
    }
    return 0;
}
