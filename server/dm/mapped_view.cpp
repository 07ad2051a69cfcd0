#include "dm/mapped_view.hpp"

#include "dmnbd/block_device.hpp"

namespace dmnbd {

ViewMark mark_view(const MappedView& view) {
  return {view.pieces.size(), view.owners.size(), view.holds.size()};
}

void rewind_view(MappedView& view, const ViewMark& mark) {
  view.pieces.resize(mark.pieces);
  view.owners.resize(mark.owners);
  view.holds.erase(view.holds.begin() + static_cast<std::ptrdiff_t>(mark.holds), view.holds.end());
}

}  // namespace dmnbd
