// Fuzz target: RFC 6901 JSON pointers (text/json_pointer.hpp), compared with nlohmann's own
// json_pointer: both must accept the same texts and find the same value.
// Input: pointer text, 0x1F, JSON document.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "fuzz_common.hpp"
#include "text/json_pointer.hpp"

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
    return 0;
}
