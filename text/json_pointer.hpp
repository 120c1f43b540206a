// RFC 6901 JSON pointer, parsed once at config load and walked without exceptions on the
// request path (nlohmann's own json_pointer throws on missing members).
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace batchgate::routes {

class json_pointer {
public:
    json_pointer() = default;  // the root ("")

    // nullopt when text is neither "" nor starts with '/', or has a bad '~' escape.
    static std::optional<json_pointer> parse(std::string_view text);

    // The value at this pointer, or nullptr when any step is missing or of the wrong type.
    const nlohmann::json* find(const nlohmann::json& doc) const;

    // The text of the value at this pointer in a JSON text nlohmann accepted (the value's own
    // bytes, as text/json_text.hpp finds them), or nullopt when find() would give nullptr.
    std::optional<std::string_view> find_text(std::string_view json) const;
    // The same, in a value's own text (no space or byte order mark around it, as
    // json_array_elements and find_text give): without the scan that finds the value's end.
    // names_unique: as json_member's (no object in the text repeats a name).
    std::optional<std::string_view> find_in_value(std::string_view value_text, bool names_unique = false) const;
    // Calls f with every value this pointer reaches in a value's text, taking each copy of a
    // repeated member name in turn (the parse keeps the last; another reader may keep another),
    // in order: once, with find_in_value's, where no name on the way repeats. True when every
    // copy reaches a value; false when one does not (no member of the name, a value of another
    // type, no such element), and so when none does.
    bool each_in_value(std::string_view value_text, const std::function<void(std::string_view)>& f) const;

    bool is_root() const { return tokens_.empty(); }
    const std::string& text() const { return text_; }

private:
    std::vector<std::string> tokens_;
    std::string text_;
};

}  // namespace batchgate::routes
