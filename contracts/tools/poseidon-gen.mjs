// Writes poseidon/poseidon{1..6}.hex: circomlibjs's generated EVM bytecode (creation code) for
// Poseidon with 1 to 6 inputs over BN254, the hash the Rust side computes (test-vectors check
// both). Each contract answers `poseidon(uint256[n])` (selector per n, see Poseidon.sol).
import { poseidonContract } from "circomlibjs";
import { writeFileSync, mkdirSync } from "fs";

mkdirSync("poseidon", { recursive: true });
for (let n = 1; n <= 6; n++) {
  writeFileSync(`poseidon/poseidon${n}.hex`, poseidonContract.createCode(n));
}
console.log("wrote poseidon/poseidon{1..6}.hex");
